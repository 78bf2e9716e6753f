"""What a world's codec rate costs its base model's generation: frames per second of the base policies of several
worlds, sampled alike (RESULTS.md "What the procedural STFT target takes").

    python -m divcfg.experiments.world_generate worlds/small_v4 worlds/small_8x1024

Each world's base policy samples ``--batch`` held-out prompts for the world's clip length (``max_frames``), without
CFG (what a distilled student pays) and with γ = 3 (the teacher), top-k 250, one torch thread. Calls alternate
between worlds and modes (``bench.common.interleaved_median_times``), so that their ratios to the first world, taken
in the same run, hold on a loaded machine. The policy's decoder size is the world size's; what changes with the
codec is the K codebooks' embeddings and output heads of V codes, and the K - 1 delay steps.
"""
from __future__ import annotations

import argparse
import json
import os

import torch

from divcfg.bench.common import interleaved_median_times
from divcfg.common.data.world_dir import World
from divcfg.model.loaders import load_policy


def _sampler(world_dir: str, batch: int, guidance: float):
    """A call that samples ``batch`` of the world's held-out prompts with its base policy."""

    policy = load_policy(os.path.join(world_dir, "base"))
    prompts = World(world_dir).heldout_prompts()[:batch]
    with torch.inference_mode():
        cond = policy.encode_condition(prompts)
    g = torch.Generator().manual_seed(0)
    frames = policy.cfg.max_frames

    def call():
        with torch.inference_mode():
            policy.generate(cond, frames, guidance_scale=guidance, top_k=250, generator=g)
    return call, policy.cfg, frames


def main(argv: list[str] | None = None) -> int:

    ap = argparse.ArgumentParser(prog="world_generate", description=__doc__.split("\n")[0])
    ap.add_argument("worlds", nargs="+", help="built world directories; the first is the baseline")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", dest="json_out", default=None, help="write the figures here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    calls, shape = {}, {}
    for w in args.worlds:
        for mode, guidance in (("nocfg", 1.0), ("cfg3", 3.0)):
            calls[(w, mode)], cfg, frames = _sampler(w, args.batch, guidance)
        shape[w] = {"codebooks": cfg.n_codebooks, "card": cfg.card, "frames": frames}
    times = interleaved_median_times({f"{w}|{m}": fn for (w, m), fn in calls.items()}, repeats=args.repeats)
    out = {}
    for w in args.worlds:
        row = dict(shape[w])
        for mode in ("nocfg", "cfg3"):
            fps = args.batch * shape[w]["frames"] / times[f"{w}|{mode}"][0]
            base = args.batch * shape[args.worlds[0]]["frames"] / times[f"{args.worlds[0]}|{mode}"][0]
            row[mode] = {"frames_per_s": round(fps, 1), "ratio_to_first": round(fps / base, 3)}
        out[w] = row
        print(w, json.dumps(row))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"batch": args.batch, "repeats": args.repeats, "threads": 1, "worlds": out}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
