"""``divcfg embedder train``: train a contrastive music embedder on audio (a folder of WAV/FLAC/OGG/MP3 files,
or codes decoded by a codec).

A folder is read as the folder world reads one (common/data/folder.py's clips): every file resampled to one rate, cut
into consecutive clips of the embedder's clip length (two chunks: its two views), the remainder dropped. Undecodable,
silent and too-short files are named and counted. recall@1 is measured on held-out tracks, never on a clip whose
track also trained the model.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from divcfg.codec.offline import load_codec
from divcfg.common.data.audio import AudioError, read_audio
from divcfg.common.data.folder import SILENCE_RMS, cut_clips, find_audio, split_by_track
from divcfg.common.data.tokens import read_tokens
from divcfg.reward.embedder import embedder_config, recall_at_1, save_embedder, train_embedder

# Held-out clips for recall@1: its chance level is 1 / (2N - 1), so a handful of clips says nothing. 32 once the
# folder gives twice that; a smaller folder holds out a quarter (at least 2, the fewest recall@1 takes).
MIN_HELDOUT = 32
SMALL_HELDOUT_FRACTION = 0.25


@dataclass
class Clips:
    """The training material: equal-length clips, each with the track it was cut from."""

    audio: np.ndarray
    """``[N, samples]`` float32 at ``sample_rate``."""
    track: list[str]
    """``[N]`` the source of each clip: a file relative to the folder, or a token row."""
    sample_rate: int
    rate_from: str
    """Where ``sample_rate`` came from, for the output."""


def _say(message: str) -> None:
    print(f"divcfg embedder: {message}", file=sys.stderr)


def _folder_rate(rates: list[int], requested: int | None) -> tuple[int, str]:
    """The one rate every file is resampled to: ``requested``, else the most common of ``rates`` (the higher one on
    a tie, so that no file loses bandwidth it has to a coin toss)."""
    if requested is not None:
        return requested, "--sample-rate"
    counts = Counter(rates)
    rate = max(counts, key=lambda r: (counts[r], r))
    others = ", ".join(f"{r} Hz: {n}" for r, n in sorted(counts.items()) if r != rate)
    return rate, (f"the most common rate among the files ({counts[rate]} of {len(rates)})"
                  + (f"; also {others}" if others else ""))


def _silent(clips: np.ndarray) -> np.ndarray:
    """``[N]`` bool: the clips of ``clips [N, S]`` whose RMS is below SILENCE_RMS."""
    return np.sqrt(np.mean(np.square(clips, dtype=np.float64), axis=1)) < SILENCE_RMS


def _read_folder(root: Path, requested_rate: int | None, size: str, seed: int) -> Clips:
    decoded, skipped = [], Counter()
    for rel in find_audio(root):
        try:
            x, sr = read_audio(root / rel)
        except AudioError as e:  # the message names the file
            _say(f"skipped {e}")
            skipped["undecodable"] += 1
            continue
        decoded.append((rel.as_posix(), x, sr))
    if not decoded:
        raise ValueError(f"audio folder {root} holds no readable audio file"
                         + (f" ({skipped['undecodable']} undecodable)" if skipped else ""))
    rate, rate_from = _folder_rate([sr for _, _, sr in decoded], requested_rate)
    _say(f"every file resampled to {rate} Hz ({rate_from})")
    clip_samples = embedder_config(size, seed=seed, sample_rate=rate).clip_samples
    clip_s = clip_samples / rate
    clips, track = [], []
    for rel, x, sr in decoded:
        # min_rms=0 keeps every clip, so that the silent ones are counted here instead of vanishing.
        cut = cut_clips(x, sr, rate, clip_s, min_rms=0.0)
        cut = np.stack(cut) if cut else np.zeros((0, clip_samples), np.float32)
        silent = _silent(cut)
        if len(cut) == 0:
            _say(f"skipped audio file {root / rel}: shorter than one clip ({len(x) / sr:.2f} s < {clip_s:g} s)")
            skipped["too-short"] += 1
        elif silent.all():
            _say(f"skipped silent audio file {root / rel}: no {clip_s:g} s clip with RMS >= {SILENCE_RMS:g}")
            skipped["silent"] += 1
        elif silent.any():
            _say(f"dropped {int(silent.sum())} silent clip(s) of {clip_s:g} s from {root / rel}")
        clips.extend(cut[~silent])
        track.extend([rel] * int((~silent).sum()))
    if skipped:
        _say("skipped " + ", ".join(f"{n} {why} file(s)" for why, n in skipped.items()) + f" in {root}")
    if not clips:
        raise ValueError(f"audio folder {root} gives no {clip_s:g} s clip at {rate} Hz: every readable file is silent "
                         f"or shorter than one clip")
    return Clips(np.stack(clips), track, rate, rate_from)


def _decode_tokens(tokens: str, codec_dir: str) -> Clips:
    codec = load_codec(codec_dir)
    data = read_tokens(tokens)
    codes = data.codes
    rows = np.arange(len(codes))
    if "clip_id" in data.columns:
        # A clip with several captions has several rows; as two "different" clips it would be its own negative.
        _, first = np.unique(np.asarray(data.columns["clip_id"]), return_index=True)
        rows = np.sort(first)
        codes = codes[rows]
    wav = np.concatenate([codec.decode(codes[i: i + 64]).numpy() for i in range(0, len(codes), 64)])
    silent = _silent(wav)
    for i in np.flatnonzero(silent):
        _say(f"skipped silent clip: row {rows[i]} of {tokens} decodes to RMS below {SILENCE_RMS:g}")
    if silent.any():
        _say(f"skipped {int(silent.sum())} silent clip(s) of {len(wav)} in {tokens}")
    if silent.all():
        raise ValueError(f"token dataset {tokens}: every clip decodes to silence (RMS below {SILENCE_RMS:g})")
    return Clips(wav[~silent].astype(np.float32), [f"row {r}" for r in rows[~silent]], codec.sample_rate,
                 f"the codec {codec_dir}")


def heldout_split(track: list[str], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, heldout_idx)``: whole tracks held out (split_by_track, by ``seed``) until they hold at least
    ``max(MIN_HELDOUT, fraction · N)`` of the N clips when N >= 2 · MIN_HELDOUT, else ``max(2, N / 4, fraction · N)``.

    A single track can't be split by track: its last clips are held out, which leaks the track's sound into both.
    """
    n = len(track)
    floor = MIN_HELDOUT if n >= 2 * MIN_HELDOUT else max(2, math.ceil(SMALL_HELDOUT_FRACTION * n))
    want = max(floor, math.ceil(fraction * n))
    if n < 3:
        raise ValueError(f"{n} clip(s) is too few to train on some and hold out 2 for recall@1")
    tracks = len(set(track))
    if tracks == 1:
        held = min(want, n - 2)
        return np.arange(n - held), np.arange(n - held, n)
    for k in range(1, tracks):
        train_idx, heldout_idx = split_by_track(track, k / tracks, seed)
        if len(heldout_idx) >= want:
            break
    return train_idx, heldout_idx


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="divcfg embedder", description=__doc__.split(":", 1)[1].strip())
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train one embedder; run twice with different --seed for reward and eval")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--audio", help="folder of WAV/FLAC/OGG/MP3 files (searched recursively); undecodable, silent "
                                     "and too-short ones are named and skipped")
    src.add_argument("--tokens", help="token dataset (.parquet); decoded with --codec")
    t.add_argument("--codec", help="codec directory, with --tokens")
    t.add_argument("--sample-rate", type=int, help="with --audio: the rate every file is resampled to and the model "
                                                    "hears (default: the most common rate among the files)")
    t.add_argument("--out", required=True, help="output directory (safetensors + config.json)")
    t.add_argument("--size", default="small", help="preset: tiny, small or full (~25M parameters)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--steps", type=int, default=400)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--heldout", type=float, default=0.1,
                   help=f"fraction of clips held out (whole tracks) for recall@1; at least {MIN_HELDOUT} clips when "
                        f"there are {2 * MIN_HELDOUT} or more, else a quarter")
    args = ap.parse_args(argv)

    try:
        if args.tokens and not args.codec:
            raise ValueError("--tokens needs --codec to decode the codes to audio")
        if args.sample_rate is not None and (args.tokens or args.sample_rate <= 0):
            raise ValueError(f"--sample-rate {args.sample_rate}: must be a positive rate, and goes with --audio only "
                             f"(--tokens clips play at their codec's rate)")
        if not 0 <= args.heldout < 1:
            raise ValueError(f"--heldout {args.heldout}: must be in [0, 1)")
        embedder_config(args.size)  # an unknown preset fails before the folder is read
        data = (_read_folder(Path(args.audio), args.sample_rate, args.size, args.seed) if args.audio
                else _decode_tokens(args.tokens, args.codec))
        sr = data.sample_rate
        cfg = embedder_config(args.size, seed=args.seed, sample_rate=sr)
        train_idx, heldout_idx = heldout_split(data.track, args.heldout, args.seed)
        model = train_embedder(data.audio[train_idx], sr, cfg, steps=args.steps, batch_size=args.batch_size,
                               lr=args.lr)
        save_embedder(model, args.out)
        recall = recall_at_1(model, data.audio[heldout_idx], sr, cfg.chunk_samples,
                             torch.Generator().manual_seed(args.seed))
    except (ValueError, FileNotFoundError) as e:
        print(f"divcfg embedder: error: {e}", file=sys.stderr)
        return 2
    n = len(heldout_idx)
    # recall_at_1 retrieves among both chunks of every held-out clip: 2N - 1 candidates for each.
    chance = 1 / (2 * n - 1)
    _say(f"recall@1 {recall:.3f} on N={n} held-out clips of {len({data.track[i] for i in heldout_idx})} track(s) "
         f"(chance 1/(2N-1) = {chance:.3f})")
    print(json.dumps({"out": args.out, "recall_at_1": recall, "recall_at_1_chance": chance, "heldout_clips": n,
                      "heldout_tracks": len({data.track[i] for i in heldout_idx}), "train_clips": len(train_idx),
                      "clips": len(data.audio), "clip_s": data.audio.shape[1] / sr, "sample_rate": sr,
                      "sample_rate_from": data.rate_from}))
    return 0
