"""BENCHMARKS.md "tokenize": the folder path decoding each file's first clip only, against decoding whole tracks (the
earlier behaviour), on FLAC tracks longer than the clip, alternated in one process.

    python -m divcfg.experiments.tokenize_first_clip --codec worlds/music_small/codec --file-seconds 30
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import divcfg.codec.tokenize as tokenize
from divcfg.bench.tokenize import write_folder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--codec", required=True, help="a codec directory (a world's codec/)")
    ap.add_argument("--files", type=int, default=64)
    ap.add_argument("--file-seconds", type=float, default=30.0, help="each track's length")
    ap.add_argument("--seconds", type=float, default=3.0, help="the clip kept from each track")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    codec = tokenize.codec_from_dir(args.codec)
    first_clip = tokenize.read_audio_folder
    sides = {"first clip": first_clip, "whole files": lambda folder, max_seconds=None: first_clip(folder)}
    times: dict[str, list[float]] = {k: [] for k in sides}
    with tempfile.TemporaryDirectory() as tmp:
        audio, captions = write_folder(Path(tmp), args.files, args.file_seconds, codec.sample_rate)
        try:
            for _ in range(args.repeats):
                for side, reader in sides.items():
                    tokenize.read_audio_folder = reader
                    t0 = time.perf_counter()
                    tokenize.tokenize_folder(audio, captions, codec, Path(tmp) / "t.parquet", args.seconds)
                    times[side].append(time.perf_counter() - t0)
        finally:
            tokenize.read_audio_folder = first_clip
    median = {k: float(np.median(v)) for k, v in times.items()}
    for side, t in median.items():
        print(f"{side:12s} {args.files / t:8.0f} clips/s ({t * 1e3:.0f} ms per {args.files} files)")
    print(f"speed-up {median['whole files'] / median['first clip']:.2f}x (medians of {args.repeats})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
