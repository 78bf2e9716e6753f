"""Where the codec's decoder starts Griffin-Lim's phase, and how many iterations follow (RESULTS.md "Codec version 4").

    python -m divcfg.experiments.codec_phase --world worlds/music_small_v3 --out runs/codec_phase.json
    python -m divcfg.experiments.codec_phase --world worlds/small --variants zero:8,pghi:8

The world's own codec decodes its held-out codes under each variant ``PHASE:ITERATIONS`` (``zero``: the flat phase
of codec versions 2 and 3; ``pghi``: version 4's, codec/phase.py). Per variant: the multi-resolution STFT distance
on the world's 16 round-trip clips (the build's ``codec_reconstruction`` clips), the decoding speed on one thread,
and, for a world with an independent judge (the real-music world), the judge's accuracy per attribute on the
round trips of all held-out clips against its accuracy on the rendered clips, as a ratio with a 95% paired
bootstrap interval over clips (the same resample for both). Speeds are medians of calls that alternate between the
variants, so that their ratios hold on a loaded machine.
"""
from __future__ import annotations

import argparse
import functools
import json
import os

import numpy as np
import torch

from divcfg.bench.common import interleaved_median_times
from divcfg.codec.offline import load_codec, reconstruction_metrics
from divcfg.common.data.tokens import read_tokens
from divcfg.common.data.world_dir import size_params
from divcfg.reward.intervals import bootstrap_indices, ratio_interval
from divcfg.reward.pitch_judge import JUDGED, judge_hits, load_pitch_judge
from divcfg.world.music_clips import HELDOUT_AUDIO
from divcfg.world.procedural import WorldConfig, generate_corpus


def _round_trip_clips(world_dir: str) -> np.ndarray:
    """The 16 clips the world build's ``codec_reconstruction`` figure uses: the first held-out clips' audio."""
    rendered = os.path.join(world_dir, HELDOUT_AUDIO)
    if os.path.isfile(rendered):  # the real-music world keeps its held-out clips as rendered
        return np.load(rendered)[:16].astype(np.float32)
    identity = json.load(open(os.path.join(world_dir, "state.json")))["identity"]
    p = size_params(identity["size"])
    cfg = WorldConfig(seed=identity["seed"], n_clips=p["n_clips"], duration_s=p["duration_s"])
    return np.stack([c.audio for c in generate_corpus(cfg, p["n_clips"] - p["n_heldout"], 16)]).astype(np.float32)


def set_decoder(codec, variant: str) -> None:
    """Make ``codec``'s spectrogram decoder start Griffin-Lim from ``variant``'s phase and run its iterations
    (``PHASE:ITERATIONS``, e.g. ``pghi:8``)."""
    phase, iters = variant.split(":")
    codec.model.decoder.phase_init, codec.model.decoder.n_iter = phase, int(iters)


def _decode(codec, codes: torch.Tensor, variant: str) -> np.ndarray:
    """``codes`` decoded by ``codec`` with the starting phase and iterations of ``variant`` (``PHASE:ITERATIONS``)."""
    set_decoder(codec, variant)
    with torch.inference_mode():
        return codec.decode(codes).numpy()


def _decode_speeds(codec, codes: torch.Tensor, variants: list[str], repeats: int) -> dict[str, float]:
    """Decoding speed of each variant (seconds of audio per second), the variants' calls alternating so that the
    machine's load hits them alike (``bench.common.interleaved_median_times``)."""
    decode = functools.partial(_decode, codec, codes)
    times = interleaved_median_times({v: (lambda v=v: decode(v)) for v in variants}, repeats=repeats)
    audio_s = codes.shape[0] * codes.shape[-1] / codec.frame_rate
    return {v: audio_s / median for v, (median, _) in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="codec_phase", description=__doc__.split("\n")[0])
    ap.add_argument("--world", required=True, help="a built world directory (its codec, held-out codes and judge)")
    ap.add_argument("--variants", default="zero:8,pghi:0,pghi:2,pghi:8", help="PHASE:ITERATIONS, comma-separated")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--speed-clips", type=int, default=32, help="held-out clips each speed measurement decodes")
    ap.add_argument("--speed-repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="write the figures here as JSON")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    codec = load_codec(os.path.join(args.world, "codec"))
    held = read_tokens(os.path.join(args.world, "heldout.parquet"))
    codes = torch.as_tensor(np.asarray(held.codes), dtype=torch.long)
    clips = _round_trip_clips(args.world)
    judge = load_pitch_judge(args.world)
    out: dict = {"world": args.world, "clips": len(held.prompts), "variants": {}}
    if judge is not None:
        names = [a for a in JUDGED if f"attr_{a}" in held.columns]
        truth = [{a: held.columns[f"attr_{a}"][i] for a in names} for i in range(len(held.prompts))]
        rendered = np.load(os.path.join(args.world, HELDOUT_AUDIO))
        hits = functools.partial(judge_hits, judge, sample_rate=codec.sample_rate, attributes=truth)
        ceiling = hits(rendered)
        idx = bootstrap_indices(len(held.prompts), args.bootstrap)
    for variant in args.variants.split(","):
        decoded = _decode(codec, codes, variant)
        row = {"stft_distance": reconstruction_metrics(codec, clips)["stft_distance"]}
        if judge is not None:
            got = hits(decoded)
            row["judge"] = {a: dict(ratio_interval(got[a], ceiling[a], idx), round_trip=float(got[a].mean()),
                                    rendered=float(ceiling[a].mean()))
                            for a in names}
        out["variants"][variant] = row
        print(variant, json.dumps(row), flush=True)
    speeds = _decode_speeds(codec, codes[: args.speed_clips], list(out["variants"]), args.speed_repeats)
    for variant, x_realtime in speeds.items():
        out["variants"][variant]["decode_x_realtime"] = x_realtime
    print("decode speed (x real time, one thread, interleaved medians):", json.dumps(speeds))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
