"""What the real-music world's codec keeps of each collection, for the independent judge (RESULTS.md "The judge on
fresh works, and per collection").

    python -m divcfg.experiments.codec_polyphony --world worlds/music_small_v4 --variant world
    python -m divcfg.experiments.codec_polyphony --world worlds/music_small_v4 --variant mel128 --out runs/poly_mel128.json

``world`` reads the world's own codec (``unquantised``: with its quantiser skipped); any other variant is a codec
refitted as the world build fits its own (the same quarter of the training clips, rendered again, and the size's fit
settings) with the variant's changes. The
judge reads the world's 200 held-out clips as rendered and after each codec's round trip: the ratio per attribute
with its 95% paired bootstrap interval, over all clips and per collection (the Bach chorales are the corpus's
four-voice polyphony; the other collections are mostly one or two voices). One torch thread.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from divcfg.codec.fit import fit_offline_codec
from divcfg.codec.offline import OfflineCodecConfig, load_codec, mel_loss
from divcfg.common.data.tokens import read_tokens
from divcfg.common.data.world_dir import size_params
from divcfg.experiments.judge_fresh import music_identity
from divcfg.reward.intervals import ratios_by_group
from divcfg.reward.pitch_judge import JUDGED, judge_hits, load_pitch_judge
from divcfg.world.build import codec_fit_indices
from divcfg.world.music_clips import HELDOUT_AUDIO, WORKS_PER_SIZE, _render_batch, heldout_collections, plan_clips
from divcfg.world.music_corpus import MusicConfig, load_works

# Changes to the world's codec config; n_vectors and kmeans_iters change the codebooks' fit.
# "unquantised" is the world's codec with its quantiser skipped: what its analysis and decoder keep given exact latents.
VARIANTS = {"world": {}, "unquantised": {}, "mel128": dict(dimension=128),
            "card1024": dict(card=1024, n_vectors=80000, kmeans_iters=20),
            "k8_card1024": dict(n_codebooks=8, card=1024, n_vectors=80000, kmeans_iters=20)}


def fit_clips(world_dir: str, identity: dict, workers: int) -> np.ndarray:
    """The training clips the world build fitted its codec on (world/build.py ``codec``), rendered again."""

    p, seed = size_params(identity["size"]), identity["seed"]
    cfg = MusicConfig(n_works=WORKS_PER_SIZE[identity["size"]], duration_s=p["duration_s"], seed=seed, workers=workers)
    plan, n_train = plan_clips(load_works(cfg, world_dir), p["n_clips"], p["n_heldout"], seed)
    fit_idx = codec_fit_indices(n_train, seed)
    clips = [r[0][0] for r in _render_batch(([plan[i] for i in fit_idx], [int(i) for i in fit_idx], cfg, 1))]
    return np.stack([c.audio for c in clips]).astype(np.float32)


def variant_codec(world_dir: str, variant: str, workers: int):
    """The world's codec, or one refitted with ``variant``'s changes."""
    from divcfg.common.data.world_dir import World, size_params

    codec = load_codec(os.path.join(world_dir, "codec"))
    if variant in ("world", "unquantised"):
        return codec
    identity = World(world_dir).state()["identity"]
    p = size_params(identity["size"])
    change = dict(VARIANTS[variant])
    fit = {"n_vectors": change.pop("n_vectors", p["fit_vectors"]), "kmeans_iters": change.pop("kmeans_iters",
                                                                                              p["kmeans_iters"])}
    cfg = OfflineCodecConfig(**{**codec.config["offline"], **change})
    return fit_offline_codec(fit_clips(world_dir, identity, workers), cfg, **fit)


@torch.inference_mode()
def round_trip(codec, wav: np.ndarray, quantise: bool = True) -> np.ndarray:
    """``wav [B, N]`` through ``codec``; without ``quantise``, its decoder reads the encoder's latents as they are."""
    if quantise:
        return codec.decode(codec.encode(wav)).numpy()
    model = codec.model
    return model.decoder(model.encoder(torch.as_tensor(wav)[:, None]))[:, 0].numpy()


def main(argv: list[str] | None = None) -> int:

    ap = argparse.ArgumentParser(prog="codec_polyphony", description=__doc__.split("\n")[0])
    ap.add_argument("--world", required=True, help="a built real-music world")
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="world")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=1, help="processes that render the fit clips")
    ap.add_argument("--out", default=None, help="write the figures here as JSON")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    music_identity(args.world)  # the judge and the collections exist only in a real-music world
    t0 = time.perf_counter()
    codec = variant_codec(args.world, args.variant, args.workers)
    fit_s = time.perf_counter() - t0
    held = read_tokens(os.path.join(args.world, "heldout.parquet"))
    collections = heldout_collections(args.world)
    truth = [{a: held.columns[f"attr_{a}"][i] for a in JUDGED} for i in range(len(held.prompts))]
    rendered = np.load(os.path.join(args.world, HELDOUT_AUDIO)).astype(np.float32)
    if len(collections) != len(rendered):
        raise ValueError(f"{args.world}: corpus.parquet marks {len(collections)} held-out clips, "
                         f"{HELDOUT_AUDIO} holds {len(rendered)}; rebuild the world")
    judge = load_pitch_judge(args.world)
    trip = np.concatenate([round_trip(codec, rendered[i: i + 32], args.variant != "unquantised")
                           for i in range(0, len(rendered), 32)])[:, : rendered.shape[1]]
    # The world build's codec_reconstruction figure: the first 16 held-out clips.
    stft = float(mel_loss(torch.as_tensor(trip[:16]), torch.as_tensor(rendered[:16]), codec.sample_rate))
    ceiling = judge_hits(judge, rendered, codec.sample_rate, truth)
    got = judge_hits(judge, trip, codec.sample_rate, truth)
    out = {"world": args.world, "variant": args.variant, "fit_s": round(fit_s, 1),
           "tokens_per_s": codec.n_codebooks * codec.frame_rate, "bits_per_s": codec.n_codebooks * codec.frame_rate
           * float(np.log2(codec.card)), "stft_distance": stft,
           "judge": ratios_by_group(got, ceiling, collections, args.bootstrap)}
    print(json.dumps(out))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
