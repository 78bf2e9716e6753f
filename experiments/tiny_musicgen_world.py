"""The inputs of BENCHMARKS.md "pipeline: MusicGen's weights in divcfg's decoder against the adapter": a tiny random
MusicGen saved as a user's directory would be (``save_pretrained``), a folder of 24 tone tracks with audiocraft
captions, and its folder world, built by ``divcfg world build --kind folder``.

    python -m divcfg.experiments.tiny_musicgen_world --out runs/tiny_musicgen
    divcfg bench pipeline --compare decoder --world-size tiny --world-dir runs/tiny_musicgen/world --steps 30 \\
        --repeats 3 model=musicgen_small model.musicgen=runs/tiny_musicgen/tiny-musicgen model.local_files_only=true \\
        model.text_max_len=96
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import soundfile as sf

from divcfg.model.musicgen.loading import tiny_musicgen
from divcfg.world.build import main as build_main

TRACKS, TRACK_S, RATE = 24, 3.0, 8000
MOODS = ("calm", "bright", "dark", "busy")


def write_folder(audio: Path, rng: np.random.Generator) -> Path:
    """Tone tracks of distinct pitch and tremolo, each with its audiocraft sidecar JSON, listed in data.jsonl."""
    audio.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(TRACK_S * RATE)) / RATE
    lines = []
    for i in range(TRACKS):
        f = 110 * 2 ** (i / 6)
        x = 0.3 * np.sin(2 * np.pi * f * t) * (1 + 0.5 * np.sin(2 * np.pi * (1 + i % 5) * t))
        rel = f"track{i:02d}.wav"
        sf.write(audio / rel, (x + 0.01 * rng.standard_normal(len(t))).astype(np.float32), RATE)
        (audio / rel).with_suffix(".json").write_text(json.dumps({"description": f"a {MOODS[i % 4]} tone, {i}"}))
        lines.append(json.dumps({"path": rel, "duration": TRACK_S, "sample_rate": RATE}))
    (audio / "data.jsonl").write_text("\n".join(lines) + "\n")
    return audio / "data.jsonl"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="directory for tiny-musicgen/, music/ and world/")
    args = ap.parse_args(argv)
    out = Path(args.out)
    model_dir = out / "tiny-musicgen"
    if not (model_dir / "config.json").exists():
        tiny_musicgen(seed=0).save_pretrained(model_dir)
    captions = write_folder(out / "music", np.random.default_rng(0))
    return build_main(["build", "--kind", "folder", "--audio", str(out / "music"), "--captions", str(captions),
                       "--out", str(out / "world"), "--model", str(model_dir), "--clip-s", "1.0",
                       "--heldout-fraction", "0.25", "--embedder-steps", "20", "--no-progress"])


if __name__ == "__main__":
    raise SystemExit(main())
