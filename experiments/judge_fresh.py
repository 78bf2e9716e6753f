"""The independent judge through a real-music world's codec, on fresh works the world never saw (RESULTS.md "The judge
on fresh works, and per collection").

    python -m divcfg.experiments.judge_fresh --world worlds/music_small_v4 --clips 1000 --variants pghi:8,pghi:0 \\
        --out results/judge_fresh_music_small_v4.json

The world's own figure (world.json ``pitch_judge_real.ratio``) reads the judge on its 200 held-out clips, and
``experiments/codec_phase.py`` chose between decoders on those same clips. This one draws a new test set: the next
``--clips`` usable works of the world's collections after the ones it was built from (music21's corpus, in the
world's seeded order), one excerpt each, rendered as the world renders its clips. Each clip comes from its own work,
so the clips are independent and a bootstrap over clips is the honest interval. Per decoder ``PHASE:ITERATIONS``:
the judge's accuracy per attribute after the codec's round trip against its accuracy on the rendered clips, as a
ratio with a 95% paired bootstrap interval (the codec's target: >= 0.8 of the rendered accuracy).

The world directory is only read: works parsed for the fresh set are cached under ``--cache`` (default beside
``--out``), which starts from a copy of the world's own parse cache.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np
import pyarrow.parquet as pq
import torch

from divcfg.codec.offline import load_codec
from divcfg.common.data.world_dir import World, size_params
from divcfg.experiments.codec_phase import _decode
from divcfg.reward.intervals import bootstrap_indices, ratio_interval
from divcfg.reward.pitch_judge import JUDGED, judge_hits, load_pitch_judge
from divcfg.world.music_clips import WORKS_PER_SIZE, _render_batch
from divcfg.world.music_corpus import CACHE_FILE, MusicConfig, load_works


def music_identity(world_dir: str) -> dict:
    """The identity of the real-music world in ``world_dir``; anything else is refused, naming it."""

    identity = World(world_dir).state().get("identity")
    if not identity:
        raise ValueError(f"--world {world_dir} holds no built world (no state.json); build one with "
                         "divcfg world build --kind music")
    if identity.get("kind") != "music":
        raise ValueError(f"--world {world_dir} is a {identity.get('kind', 'procedural')} world; the judge needs a "
                         "real-music one (divcfg world build --kind music)")
    return identity


def fresh_works(world_dir: str, n: int, cache_dir: str, workers: int) -> tuple[list[dict], "MusicConfig"]:
    """``n`` usable works the world was not built from, next in the world's seeded order, and the world's config."""


    identity = music_identity(world_dir)
    os.makedirs(cache_dir, exist_ok=True)
    if not os.path.isfile(os.path.join(cache_dir, CACHE_FILE)):
        shutil.copyfile(os.path.join(world_dir, CACHE_FILE), os.path.join(cache_dir, CACHE_FILE))
    size = identity["size"]
    cfg = MusicConfig(n_works=WORKS_PER_SIZE[size] + n, duration_s=size_params(size)["duration_s"],
                      seed=identity["seed"], workers=workers)
    used = set(pq.read_table(os.path.join(world_dir, "corpus.parquet"), columns=["work"]).column("work").to_pylist())
    works = load_works(cfg, cache_dir).works
    # A larger draw need not hold every one of the world's works (a work drawn past a full share is passed over), but
    # it holds most of them unless the world came from other collections or another seed.
    shared = len(used & {w["id"] for w in works})
    if shared < 0.9 * len(used):
        raise ValueError(f"only {shared} of {world_dir}'s {len(used)} works are in this draw of the default "
                         "collections; was the world built with other collections (--collections)?")
    fresh = [w for w in works if w["id"] not in used]
    if len(fresh) < n:
        raise ValueError(f"the world's collections hold only {len(fresh)} usable works beyond the world's; "
                         f"asked for --clips {n}")
    return fresh[:n], cfg


def render_fresh(works: list[dict], cfg, first_id: int) -> tuple[np.ndarray, list[dict]]:
    """One rendered excerpt of each work (clip ids from ``first_id``), and its attributes."""

    chunks = [(works[i: i + 32], list(range(first_id + i, first_id + min(len(works), i + 32))), cfg, 1)
              for i in range(0, len(works), 32)]
    with ProcessPoolExecutor(cfg.workers or os.cpu_count() or 1, mp_context=get_context("spawn")) as pool:
        clips = [r[0][0] for part in pool.map(_render_batch, chunks) for r in part]
    return np.stack([c.audio for c in clips]).astype(np.float32), [dict(c.attributes) for c in clips]


def main(argv: list[str] | None = None) -> int:

    ap = argparse.ArgumentParser(prog="judge_fresh", description=__doc__.split("\n")[0])
    ap.add_argument("--world", required=True, help="a built real-music world (its codec, judge and works)")
    ap.add_argument("--clips", type=int, default=1000, help="fresh works, one clip each")
    ap.add_argument("--variants", default="pghi:8,pghi:0", help="decoders PHASE:ITERATIONS, comma-separated")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=0, help="processes that parse and render (0: every core)")
    ap.add_argument("--first-id", type=int, default=1_000_000, help="clip id of the first fresh clip (its rng)")
    ap.add_argument("--out", required=True, help="the figures as JSON")
    ap.add_argument("--cache", default=None, help="parse cache for the fresh works (default: beside --out)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    cache = args.cache or os.path.join(os.path.dirname(os.path.abspath(args.out)), "judge_fresh_cache")
    works, cfg = fresh_works(args.world, args.clips, cache, args.workers)
    audio, truth = render_fresh(works, cfg, args.first_id)
    codec = load_codec(os.path.join(args.world, "codec"))
    judge = load_pitch_judge(args.world)
    codes = torch.cat([codec.encode(audio[i: i + 64]) for i in range(0, len(audio), 64)])
    truth = [{a: t[a] for a in JUDGED if a in t} for t in truth]
    ceiling = judge_hits(judge, audio, cfg.sample_rate, truth)
    idx = bootstrap_indices(len(truth), args.bootstrap)
    out: dict = {"world": args.world, "clips": len(truth), "works": sorted({w["id"] for w in works})[:3] + ["..."],
                 "collections": {c: sum(w["collection"] == c for w in works) for c in cfg.collections},
                 "rendered": {a: float(h.mean()) for a, h in ceiling.items()}, "variants": {}}
    for variant in args.variants.split(","):
        got = judge_hits(judge, _decode(codec, codes, variant), codec.sample_rate, truth)
        out["variants"][variant] = {a: dict(ratio_interval(got[a], ceiling[a], idx), round_trip=float(got[a].mean()))
                                    for a in got}
        print(variant, json.dumps(out["variants"][variant]), flush=True)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
