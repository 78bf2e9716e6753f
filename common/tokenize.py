"""``divcfg tokenize``: a folder of WAV files plus a captions file -> a token dataset (the path real users take).

Captions: JSONL (``{"file": "a.wav", "caption": "..."}`` per line) or a two-column CSV/TSV (``file,caption``).
Audio is mixed to mono, resampled to the codec's rate, and cut or zero-padded to ``--seconds``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import numpy as np


class TokenizeError(ValueError):
    pass


def read_captions(path: str | os.PathLike) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise TokenizeError(f"captions file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TokenizeError(f"captions file {path} is not UTF-8") from None
    out: dict[str, str] = {}
    if path.suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                out[obj["file"]] = obj["caption"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise TokenizeError(f"{path}:{n}: expected {{\"file\": ..., \"caption\": ...}}") from None
    else:
        dialect = "excel-tab" if path.suffix == ".tsv" else "excel"
        for n, row in enumerate(csv.reader(text.splitlines(), dialect=dialect), 1):
            if not row or (n == 1 and [c.lower() for c in row[:2]] == ["file", "caption"]):
                continue
            if len(row) < 2:
                raise TokenizeError(f"{path}:{n}: expected two columns, file and caption")
            out[row[0]] = row[1]
    if not out:
        raise TokenizeError(f"captions file {path} holds no captions")
    return out


def tokenize_folder(audio_dir: str | os.PathLike, captions_path: str | os.PathLike, codec, out: str | os.PathLike,
                    seconds: float, batch: int = 16) -> dict:
    """Encode every captioned WAV in ``audio_dir``; returns counts. Every failure names the file."""
    from divcfg.common.audio import read_wav, resample
    from divcfg.common.tokens import write_tokens

    audio_dir = Path(audio_dir)
    if not audio_dir.is_dir():
        raise TokenizeError(f"audio folder not found: {audio_dir}")
    wavs = sorted(p.name for p in audio_dir.glob("*.wav"))
    if not wavs:
        raise TokenizeError(f"audio folder {audio_dir} holds no .wav files")
    captions = read_captions(captions_path)
    missing = [w for w in wavs if w not in captions]
    unknown = [c for c in captions if c not in set(wavs)]
    if missing or unknown:
        raise TokenizeError(f"captions file {captions_path} does not match {audio_dir}: "
                            f"{len(missing)} WAV file(s) without a caption {missing[:3]}, "
                            f"{len(unknown)} caption(s) without a WAV file {unknown[:3]}")
    n = int(round(seconds * codec.sample_rate))
    clips, resampled, unreadable = [], 0, []
    for name in wavs:
        try:
            x, sr = read_wav(audio_dir / name)
        except ValueError as e:
            unreadable.append(f"{name} ({e})")
            continue
        if sr != codec.sample_rate:
            x = resample(x, sr, codec.sample_rate)
            resampled += 1
        clips.append((name, np.pad(x[:n], (0, max(0, n - len(x))))))
    if not clips:
        raise TokenizeError(f"no readable WAV in {audio_dir}: {unreadable[:3]}")
    if unreadable:
        raise TokenizeError(f"{len(unreadable)} unreadable WAV file(s) in {audio_dir}: {unreadable[:3]}")
    audio = np.stack([c for _, c in clips]).astype(np.float32)
    codes = np.concatenate([codec.encode(audio[i: i + batch]).numpy() for i in range(0, len(audio), batch)])
    meta = {"codec": codec.name, "card": codec.card, "sample_rate": codec.sample_rate,
            "frame_rate": codec.frame_rate, "source": str(audio_dir)}
    write_tokens(out, [captions[name] for name, _ in clips], codes, meta, {"file": [name for name, _ in clips]})
    return {"clips": len(clips), "resampled": resampled, "frames": int(codes.shape[2])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="divcfg tokenize", description=__doc__.split(":", 1)[1].strip())
    ap.add_argument("--audio", required=True, help="folder of .wav files")
    ap.add_argument("--captions", required=True, help="captions file: .jsonl, .csv or .tsv (file, caption)")
    ap.add_argument("--out", required=True, help="output token dataset (.parquet)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--codec", help="codec directory (e.g. WORLD/codec)")
    src.add_argument("--encodec-bandwidth", type=float, help="pretrained EnCodec 24 kHz at this bandwidth (kbps)")
    ap.add_argument("--encodec-repository", help="local directory holding the EnCodec checkpoint (no internet)")
    ap.add_argument("--seconds", type=float, default=3.0, help="clip length; longer audio is cut, shorter padded")
    args = ap.parse_args(argv)
    from divcfg.common.codec import load_codec, pretrained_encodec
    try:
        codec = (load_codec(args.codec) if args.codec
                 else pretrained_encodec(args.encodec_bandwidth, args.encodec_repository))
        result = tokenize_folder(args.audio, args.captions, codec, args.out, args.seconds)
    except (TokenizeError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"divcfg tokenize: error: {e}", file=sys.stderr)
        return 2
    print(f"tokenized {result['clips']} clips ({result['resampled']} resampled to {codec.sample_rate} Hz), "
          f"{result['frames']} frames each -> {args.out}")
    return 0
