"""``divcfg export``: a MusicGen student (a trained, merged or resumed policy checkpoint) as a Hugging Face
directory, so that the user's own tools load it with ``MusicgenForConditionalGeneration.from_pretrained``.

A divcfg MusicGen checkpoint holds only the trained tensors and where the frozen rest comes from (the base model's
directory); the export writes the whole model, its EnCodec and its tokenizer, under MusicGen's own tensor names, the
converted decoder mapped back exactly (model/musicgen/convert.py), so the export's tensors are the student's bit
for bit.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from divcfg.common.storage.checkpoint import CheckpointError
from divcfg.model.loaders import is_musicgen_directory, load_musicgen_policy, policy_family, save_musicgen_pretrained


def export_musicgen(checkpoint: str, out: str, local_files_only: bool = True) -> Path:
    """Write ``checkpoint`` (a ``family: musicgen`` policy checkpoint) to ``out`` with ``save_pretrained``."""
    if is_musicgen_directory(checkpoint):
        raise ValueError(f"{checkpoint} is already a Hugging Face MusicGen directory: from_pretrained reads it as is")
    if policy_family(checkpoint) != "musicgen":
        raise ValueError(f"{checkpoint} is not a MusicGen policy checkpoint (its config.json has no family: musicgen); "
                         f"only MusicGen students export to MusicgenForConditionalGeneration")
    target = Path(out)
    if target.exists() and any(target.iterdir()):
        raise ValueError(f"--out {out} exists and is not empty: export writes a new directory, nothing is overwritten")
    policy, codec = load_musicgen_policy(checkpoint, local_files_only=local_files_only)
    # The tiny random model's byte tokenizer has no files to save; a real MusicGen's T5 tokenizer does
    tokenizer = policy.tokenizer if hasattr(policy.tokenizer, "save_pretrained") else None
    return save_musicgen_pretrained(policy, codec, target, tokenizer=tokenizer)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="divcfg export", description=__doc__.split("\n")[0].split(":", 1)[1].strip())
    ap.add_argument("checkpoint", help="a MusicGen policy checkpoint: RUN/student, a merge's --out, ...")
    ap.add_argument("--out", required=True, help="the Hugging Face directory to write (new or empty)")
    ap.add_argument("--allow-download", action="store_true",
                    help="let the frozen base model be fetched from the Hub if it is not a local directory")
    args = ap.parse_args(argv)
    try:
        path = export_musicgen(args.checkpoint, args.out, local_files_only=not args.allow_download)
    except (ValueError, FileNotFoundError, OSError, CheckpointError, ImportError) as e:
        print(f"divcfg export: error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0
