"""Claim 5 as the paper means it: a distilled model samples without CFG, so at its best batch it generates about
twice the frames/s of the CFG-guided base model at *its* best batch.

``divcfg eval``'s claim 5 compares the merged model with γ = 3 at one batch, the eval's. Here one policy is timed
over a batch sweep in both modes: without CFG (γ = 1: one forward of B rows per token) and with CFG (γ = 3: the cond
and null rows batched as one forward of 2B rows per token, ``model/sampling.py``). A GPU that is not yet busy at
batch B runs 2B rows nearly as fast as B, so the equal-batch ratio understates what a deployment gains, and the
fair comparison is each mode at the batch where it is fastest.

What is timed: ``policy.generate(cond, T, guidance_scale=γ, top_k=k, generator=g)`` per (batch, mode), the text
condition encoded beforehand (bench/generate.py's ``_divcfg_fn``). Every call of a repeat alternates with the others
(all batches, both modes), after one untimed warm-up call each, so machine load hits them alike. Per repeat, each
mode's best frames/s over the batches; their ratio per repeat gives the t interval over repeats.

Entries: ``batch_sweep/<policy>/b<B>/{nocfg,cfg}`` (frames/s, median over repeats; the cfg entry's baseline is the
nocfg one at the same batch), ``batch_sweep/<policy>/best/{nocfg,cfg}`` (the best batch's) and
``batch_sweep/<policy>/speedup`` (best no-CFG over best CFG frames/s, with ``lo``/``hi`` over repeats; target 1.8 as
the eval's claim 5, met when ``lo`` is at least that, or the estimate with one repeat).

Run: ``divcfg bench batch-sweep --world worlds/music_small --device cuda --json bench/results/batch_sweep.json``.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import torch

from divcfg.bench.common import _prompts, machine_info, print_table, write_results
from divcfg.bench.generate import CFG_SCALE, _divcfg_fn, _split, build_divcfg
from divcfg.common.data.tokens import read_tokens
from divcfg.common.data.world_dir import World
from divcfg.model.loaders import load_policy
from divcfg.reward.intervals import seed_interval

DEFAULT_BATCHES = (8, 16, 32, 64, 128, 256)
SPEEDUP_TARGET = 1.8  # the eval's claim 5 (reward/eval_report.py SPEEDUP)
MODES = (("nocfg", 1.0), ("cfg", CFG_SCALE))


def load_subject(checkpoint: str | None, world: str | None, preset: str | None, frames: int | None,
                 device: str) -> tuple[object, str, list[str], int]:
    """``(policy, label, prompts, frames)``: a checkpoint, a world's base model (its held-out prompts and clip
    length), or a preset's random weights."""
    if sum(x is not None for x in (checkpoint, world, preset)) != 1:
        raise ValueError("give one of --checkpoint DIR, --world DIR (its base model) or --preset NAME")
    if world is not None:
        w = World(world)
        if not w.path("base").is_dir():
            raise FileNotFoundError(f"--world {world}: no base model there (build the world first)")
        policy = load_policy(w.path("base"), device).eval()
        t = frames or read_tokens(w.path("heldout.parquet")).codes.shape[2]
        return policy, "base", w.heldout_prompts(), t
    if checkpoint is not None:
        policy = load_policy(checkpoint, device).eval()
        return policy, "checkpoint", [], frames or policy.cfg.max_frames
    t = frames or 150
    return build_divcfg(preset, t, device=device), preset, [], t


def time_sweep(policy, prompts: list[str], batches, frames: int, repeats: int, top_k: int,
               dtype: torch.dtype = torch.float32) -> dict:
    """Seconds ``{(batch, mode): [repeats]}`` of every call, alternating all of them within each repeat, after one
    untimed warm-up call each; a (batch, mode) that runs out of memory is left out (with its larger batches)."""
    fns, skipped = {}, {}
    for batch in batches:
        rows = [prompts[i % len(prompts)] for i in range(batch)] if prompts else _prompts(batch)
        cond = policy.encode_condition(rows)
        for mode, scale in MODES:
            if any(m == mode for (_, m) in skipped):
                skipped[(batch, mode)] = "a smaller batch ran out of memory"
                continue
            fn = _divcfg_fn(policy, cond, frames, scale, top_k, dtype)
            try:
                fn()  # warm-up (and, on a GPU, the CUDA graph's capture)
            except torch.OutOfMemoryError:
                skipped[(batch, mode)] = "out of memory"
                torch.cuda.empty_cache()
                continue
            fns[(batch, mode)] = fn
    seconds = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            seconds[key].append(time.perf_counter() - t0)
    return {"seconds": seconds, "skipped": skipped}


def summarize(seconds: dict, frames: int, label: str, extra: dict) -> list[dict]:
    """The entries of one sweep from ``{(batch, mode): [seconds per repeat]}`` (every key the same repeats)."""
    fps = {(b, m): [b * frames / s for s in ts] for (b, m), ts in seconds.items()}
    out = []
    for (batch, mode), values in fps.items():
        med = statistics.median(values)
        base = statistics.median(fps[(batch, "nocfg")]) if mode == "cfg" and (batch, "nocfg") in fps else None
        out.append(_entry(f"batch_sweep/{label}/b{batch}/{mode}", med, "frames/s", base, None, batch=batch,
                          mode=mode, guidance_scale=dict(MODES)[mode], forward_passes_per_token=1 if mode == "nocfg"
                          else 2, rows_per_forward=batch if mode == "nocfg" else 2 * batch, all_frames_per_s=values,
                          **extra))
    best, per_repeat = {}, {}
    for mode, _ in MODES:
        mine = {b: v for (b, m), v in fps.items() if m == mode}
        if not mine:
            continue
        at = max(mine, key=lambda b: statistics.median(mine[b]))
        best[mode] = (at, statistics.median(mine[at]))
        per_repeat[mode] = [max(v[r] for v in mine.values()) for r in range(len(mine[at]))]
        out.append(_entry(f"batch_sweep/{label}/best/{mode}", best[mode][1], "frames/s", None, None, batch=at,
                          mode=mode, forward_passes_per_token=1 if mode == "nocfg" else 2, **extra))
    if len(best) == 2:
        ratios = [a / b for a, b in zip(per_repeat["nocfg"], per_repeat["cfg"])]
        mean, lo, hi = seed_interval(ratios)
        lo, hi = (None, None) if math.isnan(lo) else (lo, hi)
        value = best["nocfg"][1] / best["cfg"][1]
        out.append(_entry(f"batch_sweep/{label}/speedup", value, "x", None, SPEEDUP_TARGET,
                          met=(lo if lo is not None else value) >= SPEEDUP_TARGET, lo=lo, hi=hi,
                          mean_of_repeats=mean, per_repeat=ratios, best_batch_nocfg=best["nocfg"][0],
                          best_batch_cfg=best["cfg"][0], forward_passes_per_token={"nocfg": 1, "cfg": 2},
                          interval="t interval over repeats of the per-repeat ratio of the bests", **extra))
    return out


def _entry(name, value, unit, baseline, target, met=None, **extra) -> dict:
    ratio = value / baseline if baseline else None
    return dict(name=name, value=float(value), unit=unit, baseline_value=baseline, ratio=ratio, target=target,
                met=met, **extra)


def run(checkpoint: str | None = None, world: str | None = None, preset: str | None = None,
        batches=DEFAULT_BATCHES, frames: int | None = None, repeats: int = 3, top_k: int = 0, device: str = "cpu",
        dtype: str = "fp32", threads: int = 0, json_out: str | None = None, verbose: bool = True) -> list[dict]:
    """Time the sweep and return its entries (written to ``json_out`` with the machine's description)."""
    if repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {repeats}")
    if not batches or min(batches) < 1:
        raise ValueError(f"--batches must be positive, got {list(batches)}")
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        policy, label, prompts, t = load_subject(checkpoint, world, preset, frames, device)
        torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
        timed = time_sweep(policy, prompts, sorted(set(batches)), t, repeats, top_k, torch_dtype)
    finally:
        torch.set_num_threads(previous)
    extra = {"frames": t, "top_k": top_k, "dtype": dtype, "repeats": repeats}
    results = summarize(timed["seconds"], t, label, extra)
    for (batch, mode), why in timed["skipped"].items():
        results.append(_entry(f"batch_sweep/{label}/b{batch}/{mode}", math.nan, "frames/s", None, None,
                              skipped=why, batch=batch, mode=mode, **extra))
    if verbose:
        print_table(results)
    if json_out:
        machine = machine_info(device)
        machine["subject"] = checkpoint or world or preset
        write_results(json_out, results, machine)
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="divcfg bench batch-sweep", description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", help="a policy checkpoint directory")
    ap.add_argument("--world", help="a world directory: its base model, held-out prompts and clip length")
    ap.add_argument("--preset", help="a model preset with random weights (tiny, small, ...)")
    ap.add_argument("--batches", nargs="+", default=[",".join(map(str, DEFAULT_BATCHES))],
                    help="batch sizes (space or comma separated)")
    ap.add_argument("--frames", type=int, default=None, help="frames per sample (default: the world's clip length)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats, every call interleaved")
    ap.add_argument("--top-k", dest="top_k", type=int, default=0, help="top-k filter (0: the full distribution)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"), help="bf16: autocast (GPU)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: as set)")
    ap.add_argument("--json", dest="json_out", metavar="OUT", default=None, help="write results JSON here")
    args = ap.parse_args(argv)
    try:
        run(args.checkpoint, args.world, args.preset, _split(args.batches, int), args.frames, args.repeats,
            args.top_k, args.device, args.dtype, args.threads, args.json_out)
    except (ValueError, FileNotFoundError) as e:
        print(f"divcfg bench batch-sweep: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
