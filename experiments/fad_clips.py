"""How many clips FAD needs (RESULTS.md "Fréchet audio distance").

    python -m divcfg.experiments.fad_clips --world DIR [--samples 240] [--seconds 2]

The world's base model samples ``--samples`` clips at γ = 1 (its held-out prompts, cycled); the reference is 600
procedural clips (the small world's clips 0..399 and 9400..9599, cut to ``--seconds``) through the world's codec.
Both are embedded by the world's held-out embedder; prints the FAD with its bootstrap interval and the clip-count
curve of :func:`divcfg.reward.fad.fad_by_clips`. One torch thread.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from divcfg.codec.evaluation import round_trip
from divcfg.common.data.world_dir import World
from divcfg.model.loaders import load_policy
from divcfg.reward.fad import fad_by_clips, fad_interval
from divcfg.reward.judges import Judges
from divcfg.world.procedural import WorldConfig, generate_corpus


def main(argv: list[str] | None = None) -> int:

    ap = argparse.ArgumentParser(prog="fad_clips", description=__doc__.split("\n")[0])
    ap.add_argument("--world", required=True, help="a built world directory")
    ap.add_argument("--samples", type=int, default=240)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    world = World(args.world)
    judges = Judges.load(world.root)
    base = load_policy(world.path("base")).eval()
    wcfg = WorldConfig(seed=0, n_clips=9600, duration_s=3.0)
    clips = generate_corpus(wcfg, start=0, count=400) + generate_corpus(wcfg, start=9400, count=200)
    n = int(args.seconds * judges.codec.sample_rate)
    real = round_trip(judges.codec, np.stack([c.audio[:n] for c in clips]).astype(np.float32))
    prompts = (world.heldout_prompts() * args.samples)[: args.samples]
    with torch.inference_mode():
        out = base.generate(base.encode_condition(prompts), judges.codec.n_frames(n), guidance_scale=1.0,
                            generator=torch.Generator().manual_seed(0))
        generated = judges.embed(judges.decode(out.codes), "eval").numpy()
        reference = judges.embed(torch.as_tensor(real), "eval").numpy()
    sizes = [16, 32, 64, 128, args.samples]
    print(json.dumps({"interval": fad_interval(generated, reference),
                      "by_clips": fad_by_clips(generated, reference, sizes, draws=20)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
