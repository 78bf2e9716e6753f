"""A folder of real audio the project can have here: the real-music world's held-out clips as rendered, written out
as a user's folder (one FLAC per work, its clips end to end, in a folder per collection, with a path,caption JSONL
holding each clip's caption), so that ``divcfg world build --kind folder`` reads real music back as any folder.

    python -m divcfg.experiments.music_folder --world worlds/music_small --out folders/music

Prints what it wrote. The world's base model never trained on these clips (they are its held-out set), so the
folder world built from them with ``--model worlds/music_small`` measures that model on music it has not seen.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import soundfile as sf

from divcfg.common.data.tokens import read_tokens
from divcfg.common.data.world_dir import World
from divcfg.world.music_clips import HELDOUT_AUDIO


def write_folder(world_dir: str, out: str) -> dict:
    world = World(world_dir)
    corpus = pq.read_table(world.path("corpus.parquet")).to_pydict()
    held = [i for i, h in enumerate(corpus["heldout"]) if h]
    audio = np.load(world.path(HELDOUT_AUDIO))  # the held-out clips as rendered, in corpus order
    rate = int(read_tokens(world.path("heldout.parquet")).meta["sample_rate"])  # the rate the corpus was rendered at
    by_work: dict[str, list[int]] = {}
    for row, i in enumerate(held):
        by_work.setdefault(corpus["work"][i], []).append(row)
    root = Path(out)
    lines = []
    for work, rows in by_work.items():
        # The work id names a file and, for a tune book, the tune in it ("book1.abc#123"): all of it in the name
        name = Path(work).name.replace("#", "_").replace(".", "_")
        rel = Path(corpus["collection"][held[rows[0]]]) / f"{name}.flac"
        if (root / rel).exists():
            raise FileExistsError(f"two works write {root / rel}: {work} and an earlier one")
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / rel, np.concatenate([audio[r] for r in rows]), rate)
        # A caption once per file (two clips of a work can share one)
        lines += [json.dumps({"path": rel.as_posix(), "caption": c})
                  for c in dict.fromkeys(corpus["prompt"][held[r]] for r in rows)]
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return {"files": len(by_work), "clips": len(held), "captions": len(lines), "sample_rate": rate,
            "seconds": float(audio.shape[1] * len(held) / rate), "out": str(root)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m divcfg.experiments.music_folder", description=__doc__.split("\n")[0])
    ap.add_argument("--world", required=True, help="a built real-music world (world build --kind music)")
    ap.add_argument("--out", required=True, help="the folder to write")
    args = ap.parse_args(argv)
    print(json.dumps(write_folder(args.world, args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
