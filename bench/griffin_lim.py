"""``divcfg bench griffin-lim``: the offline codec's Griffin-Lim (its decoding cost) against a baseline, same run.

    divcfg bench griffin-lim                                   # against torchaudio.functional.griffinlim
    git show REV:codec/vocoder.py > /tmp/vocoder_rev.py
    divcfg bench griffin-lim --baseline-file /tmp/vocoder_rev.py   # against an earlier revision's implementation

Decoding is most of a reward worker's CPU time and most of ``divcfg eval``'s, and Griffin-Lim is most of decoding.
The magnitudes have the small world's decoder shape (75% overlap: n_fft 640, hop 160, 8 iterations, 3 s clips at
16 kHz) and are random: the cost does not depend on the values. Calls alternate the two
(``bench.common.interleaved_median_times``) and are compared by their medians; the outputs' relative difference is
printed beside the ratio.
"""
from __future__ import annotations

import argparse
import importlib.util

import torch

from divcfg.bench.common import interleaved_median_times, machine_info, print_table, write_results
from divcfg.codec.vocoder import griffin_lim_overlap


def _baseline(path: str | None):
    if path is None:
        import torchaudio.functional as AF

        def ta(mag, window, hop, n_iter):
            n_fft = window.shape[0]
            return AF.griffinlim(mag, window, n_fft, hop, n_fft, 1.0, n_iter, 0.99, (mag.shape[-1] - 1) * hop, False)
        return "torchaudio.functional.griffinlim", ta
    spec = importlib.util.spec_from_file_location("vocoder_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return f"griffin_lim_overlap of {path}", module.griffin_lim_overlap


def main(argv: list[str] | None = None) -> int:

    ap = argparse.ArgumentParser(prog="divcfg bench griffin-lim", description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--baseline-file", default=None, help="a vocoder.py whose griffin_lim_overlap is the baseline")
    ap.add_argument("--target", type=float, default=1.5, help="speedup over the baseline that counts as met")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    n_fft, hop, frames = 640, 160, 3 * 16000 // 160 + 1
    mag = torch.rand(args.clips, n_fft // 2 + 1, frames, generator=torch.Generator().manual_seed(0)) * 3
    window = torch.hann_window(n_fft)
    name, baseline = _baseline(args.baseline_file)
    with torch.inference_mode():
        fns = {"divcfg": lambda: griffin_lim_overlap(mag, window, hop, args.iters),
               "baseline": lambda: baseline(mag, window, hop, args.iters)}
        times = interleaved_median_times(fns, repeats=args.repeats)
        ours, ref = fns["divcfg"](), fns["baseline"]()
    audio_s = args.clips * (frames - 1) * hop / 16000
    speedup = times["baseline"][0] / times["divcfg"][0]
    rel = float((ours - ref).norm() / ref.norm())
    results = [{"name": "griffin_lim_x_realtime", "value": audio_s / times["divcfg"][0], "unit": "x real time",
                "baseline_value": audio_s / times["baseline"][0], "ratio": speedup, "target": args.target,
                "met": speedup >= args.target, "baseline": name, "relative_difference": rel,
                "clips": args.clips, "iters": args.iters, "threads": args.threads}]
    print_table(results)
    print(f"baseline: {name}; relative output difference {rel:.2e}")
    if args.json:
        write_results(args.json, results, machine_info("cpu"))
    return 0
