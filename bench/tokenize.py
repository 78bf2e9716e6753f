"""``divcfg tokenize`` on a folder against calling the codec directly on the same clips: what reading, resampling,
checking and writing the dataset cost on top of the encoding itself (target: the folder path at ≥ 0.9× the codec's
own speed).

What is timed, alternately per repeat after one untimed call each: :func:`divcfg.codec.tokenize.tokenize_folder` on
a folder of ``--files`` FLAC files of ``--seconds`` each (decoding, resampling from ``--rate``, the silence check,
the encoding, the parquet written), and ``codec.encode`` on the same clips already in memory at the codec's rate, in
the same batches. The folder is written first from tones of distinct pitches.

Entries: ``tokenize/clips_per_s`` (the folder path; baseline: the codec's direct clips/s; target 0.9, met when the
95% t interval of the per-repeat ratios, ``lo`` to ``hi``, lies at or above it) and ``tokenize/codec_clips_per_s``.

Run: ``divcfg bench tokenize --codec worlds/music_small/codec --files 64 --json bench/results/tokenize_cpu.json``
(``--codec`` also takes a MusicGen directory: its EnCodec; or ``encodec-32khz-shape``: random weights of the 32 kHz
EnCodec that MusicGen ships, the encoder a MusicGen user's ``divcfg tokenize --codec DIR`` runs, no download).
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from divcfg.bench.common import interleaved_median_times, machine_info, print_table, write_results
from divcfg.reward.intervals import seed_interval

TARGET = 0.9
ENCODEC_32KHZ_SHAPE = "encodec-32khz-shape"


def encodec_32khz_shape(seed: int = 0):
    """MusicGen's EnCodec (facebook/encodec_32khz's architecture: 32 kHz mono, strides 8·5·4·4, 64 filters, 4 × 2048
    codes at 2.2 kbps) with random weights, behind the codec interface ``divcfg tokenize`` uses."""
    from transformers import EncodecConfig, EncodecModel  # optional extra (divcfg[musicgen])

    from divcfg.codec.musicgen import MusicGenCodec

    config = EncodecConfig(sampling_rate=32_000, upsampling_ratios=[8, 5, 4, 4], target_bandwidths=[2.2],
                           num_filters=64, codebook_size=2048, use_causal_conv=False, normalize=False,
                           use_conv_shortcut=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = EncodecModel(config).eval()
        # transformers leaves codebooks at zero (they come from a checkpoint). Codewords drawn from the encoder's own
        # latents of noise, layer by layer on what is left, give codes that follow the audio, as trained ones do.
        with torch.no_grad():
            latents = model.encoder(0.1 * torch.randn(1, 1, 4 * config.sampling_rate))
            residual = latents[0].T
            for layer in model.quantizer.layers:
                embed = residual[torch.randperm(len(residual))[:config.codebook_size]]
                embed = embed[torch.randint(len(embed), (config.codebook_size,))]  # 200 frames -> 2048 codewords
                layer.codebook.embed.copy_(embed + 1e-3 * torch.randn_like(embed))
                residual = residual - layer.codebook.embed[torch.cdist(residual, layer.codebook.embed).argmin(1)]
    return MusicGenCodec(model, 4, ENCODEC_32KHZ_SHAPE)


def repeat_ratios(folder_s: list[float], codec_s: list[float]) -> dict:
    """Each repeat's ratio (the codec's seconds over the folder path's, the two timed back to back), their mean and
    its 95% t interval: ``per_repeat``, ``mean_of_repeats``, ``lo``, ``hi`` (NaN bounds with one repeat)."""
    ratios = [c / f for f, c in zip(folder_s, codec_s)]
    mean, lo, hi = seed_interval(ratios)
    return {"per_repeat": ratios, "mean_of_repeats": mean, "lo": lo, "hi": hi}


def decided(ratio: float, per_repeat: dict) -> bool:
    """Met when the per-repeat interval lies at or above :data:`TARGET` (with one repeat, by the ratio alone)."""
    lo = per_repeat["lo"]
    return bool(ratio >= TARGET) if math.isnan(lo) else bool(lo >= TARGET)


def write_folder(root: Path, files: int, seconds: float, rate: int, fmt: str = "flac") -> tuple[Path, Path]:
    """``files`` tones of ``seconds`` in ``root/audio`` (``fmt``: flac, or wav as 16-bit PCM) and their captions file
    (the JSONL ``divcfg tokenize`` reads)."""
    audio = root / "audio"
    audio.mkdir(parents=True)
    t = np.arange(int(seconds * rate)) / rate
    lines = []
    for i in range(files):
        f = 110 * 2 ** (i / 12)
        sf.write(audio / f"tone{i:03d}.{fmt}", (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32), rate,
                 subtype="PCM_16")
        lines.append(f'{{"file": "tone{i:03d}.{fmt}", "caption": "a tone at {f:.0f} Hz"}}')
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return audio, root / "captions.jsonl"


def run(codec_dir: str, files: int = 64, seconds: float = 3.0, rate: int | None = None, batch: int = 16,
        repeats: int = 3, threads: int = 0, json_out: str | None = None, verbose: bool = True,
        file_seconds: float | None = None, fmt: str = "flac") -> list[dict]:
    from divcfg.codec.tokenize import codec_from_dir, tokenize_folder

    file_seconds = file_seconds or seconds
    if files < 1 or seconds <= 0 or repeats < 1 or file_seconds < seconds:
        raise ValueError(f"--files, --seconds and --repeats must be positive and --file-seconds at least --seconds, "
                         f"got {files}, {seconds}, {repeats}, {file_seconds}")
    if fmt not in ("flac", "wav"):
        raise ValueError(f"--format must be flac or wav, got {fmt!r}")
    if threads:
        torch.set_num_threads(threads)
    codec = encodec_32khz_shape() if codec_dir == ENCODEC_32KHZ_SHAPE else codec_from_dir(codec_dir)
    rate = rate or codec.sample_rate
    with tempfile.TemporaryDirectory() as tmp:
        audio_dir, captions = write_folder(Path(tmp), files, file_seconds, rate, fmt)
        n = int(round(seconds * codec.sample_rate))
        clips = np.stack([sf.read(p, dtype="float32")[0] for p in sorted(audio_dir.glob(f"*.{fmt}"))])
        if rate != codec.sample_rate:
            from divcfg.common.data.audio import resample
            clips = np.stack([resample(c, rate, codec.sample_rate) for c in clips])
        clips = clips[:, :n]

        def direct():
            for i in range(0, len(clips), batch):
                codec.encode(clips[i:i + batch])

        def folder():
            tokenize_folder(audio_dir, captions, codec, Path(tmp) / "tokens.parquet", seconds, batch)

        timed = interleaved_median_times({"folder": folder, "codec": direct}, repeats)
    folder_rate, codec_rate = files / timed["folder"][0], files / timed["codec"][0]
    per_repeat = repeat_ratios(timed["folder"][1], timed["codec"][1])
    extra = {"files": files, "seconds": seconds, "file_seconds": file_seconds, "format": fmt, "rate": rate,
             "codec_rate": codec.sample_rate, "batch": batch, "codec": codec_dir, "threads": torch.get_num_threads(), "repeats": repeats,
             "folder_s": timed["folder"][1], "codec_s": timed["codec"][1]}
    ratio = folder_rate / codec_rate
    results = [dict(name="tokenize/clips_per_s", value=folder_rate, unit="clips/s", baseline_value=codec_rate,
                    ratio=ratio, target=TARGET, met=decided(ratio, per_repeat), **per_repeat, **extra),
               dict(name="tokenize/codec_clips_per_s", value=codec_rate, unit="clips/s", baseline_value=None,
                    ratio=None, target=None, met=None, **extra)]
    if verbose:
        print_table(results)
    if json_out:
        write_results(json_out, results, machine_info("cpu"))
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="divcfg bench tokenize", description=__doc__.split("\n")[0])
    ap.add_argument("--codec", required=True, help="a codec directory (a world's codec/), a MusicGen directory, "
                                                 f"or {ENCODEC_32KHZ_SHAPE} (MusicGen's EnCodec, random weights)")
    ap.add_argument("--files", type=int, default=64, help="audio files in the folder")
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds per file (and per clip)")
    ap.add_argument("--file-seconds", type=float, default=None,
                    help="seconds per file, when the files are longer than a clip as a user's tracks are (default: "
                         "--seconds); the clip is each file's start")
    ap.add_argument("--format", dest="fmt", choices=("flac", "wav"), default="flac", help="the files' format")
    ap.add_argument("--rate", type=int, default=None, help="the files' sample rate (default: the codec's)")
    ap.add_argument("--batch", type=int, default=16, help="clips per encode call, on both sides")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats, the two alternating")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: as set)")
    ap.add_argument("--json", dest="json_out", metavar="OUT", default=None, help="write results JSON here")
    args = ap.parse_args(argv)
    try:
        run(args.codec, args.files, args.seconds, args.rate, args.batch, args.repeats, args.threads, args.json_out,
            file_seconds=args.file_seconds, fmt=args.fmt)
    except (ValueError, OSError, ImportError) as e:
        print(f"divcfg bench tokenize: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
