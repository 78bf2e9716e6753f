"""``divcfg tokenize``: a folder of audio files plus a captions file -> a token dataset (the path real users take).

Audio: WAV, FLAC, OGG/Vorbis or MP3; a file that can't be decoded, or whose clip is silent (RMS below
``SILENCE_RMS``), is named and skipped, and the skips are counted.

Captions: JSONL (``{"file": "a.flac", "caption": "..."}`` per line) or a two-column CSV/TSV (``file,caption``).
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

from divcfg.codec.musicgen import is_musicgen_dir, musicgen_codec_from_dir
from divcfg.codec.offline import load_codec, pretrained_encodec
from divcfg.common.data.audio import AudioError, read_audio_folder, resample
from divcfg.common.data.folder import SILENCE_RMS
from divcfg.common.data.tokens import write_tokens

# Audio decoded past the clip's end: torchaudio's resampler reads lowpass_filter_width (6) zero crossings of the lower
# rate either side, under 1 ms for any rate above 8 kHz, so 50 ms leaves the clip's last samples as from the whole file.
RESAMPLE_MARGIN_S = 0.05


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
    """Encode every captioned audio file (WAV, FLAC, OGG, MP3) in ``audio_dir``; returns counts and the skipped files.

    A file that can't be decoded (corrupt, empty, unsupported format), or whose clip (its first ``seconds``) has an
    RMS below ``SILENCE_RMS``, is skipped and named in ``skipped``; a decoded file without a caption, or a caption
    without a file, is an error, and so is a folder left with no clip. ``out`` is written only once all is encoded.
    """

    try:
        # Only each file's first clip is kept, so only that is decoded, plus a margin that covers the resampler's
        # kernel: the clip's last samples then come out as from the whole file.
        folder = read_audio_folder(audio_dir, max_seconds=seconds + RESAMPLE_MARGIN_S)
    except AudioError as e:
        raise TokenizeError(str(e)) from None
    captions = read_captions(captions_path)
    names = [name for name, _, _ in folder.clips]
    present = set(names) | set(folder.skipped)
    missing = [w for w in names if w not in captions]
    unknown = [c for c in captions if c not in present]
    if missing or unknown:
        raise TokenizeError(f"captions file {captions_path} does not match {audio_dir}: "
                            f"{len(missing)} audio file(s) without a caption {missing[:3]}, "
                            f"{len(unknown)} caption(s) without an audio file {unknown[:3]}")
    n = int(round(seconds * codec.sample_rate))
    kept, resampled, skipped = [], 0, [folder.reasons[name] for name in folder.skipped]
    audio = np.zeros((len(folder.clips), n), np.float32)  # zeros pad a file shorter than the clip
    for name, x, sr in folder.clips:
        if sr != codec.sample_rate:
            x = resample(x, sr, codec.sample_rate)
            resampled += 1
        # Over the file's own samples, not the padding: a short quiet file is no quieter for being padded.
        # Not ``own @ own``: numpy's BLAS threads would then spin beside torch's on the encode that follows (the
        # encode measured 2× slower after such a loop on 2 cores).
        own = x[:n]
        rms = float(np.sqrt(np.mean(np.square(own, dtype=np.float64))))
        if rms < SILENCE_RMS:
            # A silent clip paired with its caption would teach the model that the caption sounds like nothing.
            skipped.append(f"silent audio file {Path(audio_dir) / name}: RMS {rms:.2g} over its first {seconds:g} s "
                           f"is below {SILENCE_RMS:g}")
            continue
        audio[len(kept), :len(own)] = own
        kept.append(name)
    if not kept:
        raise TokenizeError(f"audio folder {audio_dir} gives no clip: all {len(skipped)} file(s) were skipped, "
                            f"first: {'; '.join(skipped[:3])}")
    audio = audio[:len(kept)]
    codes = np.concatenate([codec.encode(audio[i: i + batch]).numpy() for i in range(0, len(audio), batch)])
    meta = {"codec": codec.name, "card": codec.card, "sample_rate": codec.sample_rate,
            "frame_rate": codec.frame_rate, "source": str(audio_dir)}
    write_tokens(out, [captions[name] for name in kept], codes, meta, {"file": kept})
    return {"clips": len(kept), "resampled": resampled, "frames": int(codes.shape[2]), "skipped": skipped}


def codec_from_dir(path: str | os.PathLike):
    """``--codec DIR``: a MusicGen model directory's own EnCodec, or a codec directory (e.g. ``WORLD/codec``)."""
    return musicgen_codec_from_dir(path) if is_musicgen_dir(path) else load_codec(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="divcfg tokenize", description=__doc__.split(":", 1)[1].strip())
    ap.add_argument("--audio", required=True,
                    help="folder of .wav/.flac/.ogg/.mp3 files; undecodable or silent ones are named and skipped")
    ap.add_argument("--captions", required=True, help="captions file: .jsonl, .csv or .tsv (file, caption)")
    ap.add_argument("--out", required=True, help="output token dataset (.parquet)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--codec", help="codec directory (e.g. WORLD/codec), or a MusicGen model directory (its own 32 kHz "
                                     "EnCodec)")
    src.add_argument("--encodec-bandwidth", type=float, help="pretrained EnCodec 24 kHz at this bandwidth (kbps)")
    ap.add_argument("--encodec-repository", help="local directory holding the EnCodec checkpoint (no internet)")
    ap.add_argument("--seconds", type=float, default=3.0, help="clip length; longer audio is cut, shorter padded")
    args = ap.parse_args(argv)
    try:
        codec = (codec_from_dir(args.codec) if args.codec
                 else pretrained_encodec(args.encodec_bandwidth, args.encodec_repository,
                                         flag="--encodec-repository"))
        result = tokenize_folder(args.audio, args.captions, codec, args.out, args.seconds)
    except (TokenizeError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"divcfg tokenize: error: {e}", file=sys.stderr)
        return 2
    for skip in result["skipped"]:
        print(f"divcfg tokenize: skipped {skip}", file=sys.stderr)
    print(f"tokenized {result['clips']} clips ({result['resampled']} resampled to {codec.sample_rate} Hz), "
          f"{result['frames']} frames each -> {args.out}; "
          f"skipped {len(result['skipped'])} undecodable or silent file(s)")
    return 0
