"""A/B of offline codec variants on the procedural small world's clips (RESULTS.md "Codec").

    python -m divcfg.experiments.codec_ab --variant v2                   # round trip: SNR, STFT distance, speed
    python -m divcfg.experiments.codec_ab --variant v2 --scorer          # + scorer accuracy, original vs round trip
    python -m divcfg.experiments.codec_ab --variant v3 --fit-clips 2350  # the learned head, as the small world fits it
    python -m divcfg.experiments.codec_ab --variant v4_card1024 --fit-clips 2350 --decoders pghi:8,pghi:16

``--decoders PHASE:ITERATIONS,...`` scores the one fitted codec under each starting phase and number of Griffin-Lim
iterations (``decoders`` in the JSON), on the held-out clips and on their first 16 (the clips of the world's own
``codec_reconstruction``).

The codec is fitted on the small world's clips 0..299 (``--fit-clips``; the world build fits it on a quarter of the
training clips, 2350); figures are on held-out clips 9400.. (the small world's held-out split is 9400..9599).
With ``--scorer`` a "small" scorer is trained for 200 steps on 800 round-tripped training clips, as the world build
trains it on decoded audio, and read on all 200 held-out clips as they are and after the round trip. One torch thread.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from divcfg.codec.evaluation import codec_figures, round_trip
from divcfg.codec.fit import fit_offline_codec
from divcfg.codec.offline import OfflineCodecConfig, reconstruction_metrics
from divcfg.common.data.captions import ATTRIBUTES, attribute_labels
from divcfg.experiments.codec_phase import set_decoder
from divcfg.reward.scorer import scorer_accuracy, scorer_config, train_scorer
from divcfg.world.procedural import WorldConfig, generate_corpus

# Variants measured in RESULTS.md: v1 is codec version 1; v2 is the default of version 2; v3 (the learned head) is
# what the small world builds with --fit-clips 2350. n_vectors and kmeans_iters are the codebooks' fit.
FLAT = dict(phase_init="zero")  # versions 2 and 3 started Griffin-Lim from a flat phase
VARIANTS = {"v1": dict(mel_decoder="pinv"), "v2": FLAT, "v2_gl16": dict(griffin_lim_iters=16, **FLAT),
            "v3": dict(head_steps=2500, **FLAT),
            "v3_card1024": dict(head_steps=2500, card=1024, n_vectors=80000, kmeans_iters=20, **FLAT),
            "v4": dict(head_steps=2500),
            "v4_card1024": dict(head_steps=2500, card=1024, n_vectors=80000, kmeans_iters=20),
            # Higher bit rates (more codebooks, same 25 frames/s): what the procedural STFT target would take.
            "v4_k6_card1024": dict(head_steps=2500, n_codebooks=6, card=1024, n_vectors=80000, kmeans_iters=20),
            "v4_k8_card1024": dict(head_steps=2500, n_codebooks=8, card=1024, n_vectors=80000, kmeans_iters=20),
            "v2_mel128": dict(dimension=128, **FLAT), "v2_k8": dict(n_codebooks=8, **FLAT),
            "v2_ctx2": dict(context=2, **FLAT)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="codec_ab", description=__doc__.split("\n")[0])
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="v2")
    ap.add_argument("--heldout", type=int, default=32, help="held-out clips for the round-trip figures")
    ap.add_argument("--fit-clips", type=int, default=300, help="clips the codec is fitted on (from clip 0)")
    ap.add_argument("--scorer", action="store_true", help="also train a scorer and compare its accuracy")
    ap.add_argument("--decoders", default="", help="PHASE:ITERATIONS,... to score the fitted codec under as well")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    wcfg = WorldConfig(seed=0, n_clips=9600, duration_s=3.0)
    n_train_clips = max(800 if args.scorer else 0, args.fit_clips)
    train = generate_corpus(wcfg, start=0, count=n_train_clips)
    held = generate_corpus(wcfg, start=9400, count=200 if args.scorer else args.heldout)
    audio = np.stack([c.audio for c in train]).astype(np.float32)
    held_audio = np.stack([c.audio for c in held]).astype(np.float32)
    t0 = time.perf_counter()
    variant = {"card": 256, "n_vectors": 20000, "kmeans_iters": 15, **VARIANTS[args.variant]}
    fit = {k: variant.pop(k) for k in ("n_vectors", "kmeans_iters")}
    codec = fit_offline_codec(audio[: args.fit_clips], OfflineCodecConfig(**variant), **fit)
    out = {"variant": args.variant, "fit_s": round(time.perf_counter() - t0, 1)}
    accuracy = None
    if args.scorer:
        labels = np.stack([attribute_labels(c.attributes) for c in train])
        held_labels = np.stack([attribute_labels(c.attributes) for c in held])
        scorer = train_scorer(round_trip(codec, audio[:800]), labels[:800], ATTRIBUTES, codec.sample_rate,
                              scorer_config("small", seed=0, sample_rate=codec.sample_rate), steps=200,
                              batch_size=32, lr=2e-3, progress=False)

        def accuracy(w):
            return scorer_accuracy(scorer, w, held_labels, codec.sample_rate)
    out.update(codec_figures(codec, held_audio, accuracy=accuracy, timing_clips=args.heldout))
    if args.decoders:
        out["decoders"] = _decoder_figures(codec, held_audio[: args.heldout], args.decoders.split(","))
    print(json.dumps(out))
    return 0


def _decoder_figures(codec, wavs: np.ndarray, decoders: list[str]) -> dict[str, dict]:
    """Round-trip figures of ``codec`` under each decoder ``PHASE:ITERATIONS``, on ``wavs`` and on its first 16."""
    out = {}
    for d in decoders:
        set_decoder(codec, d)
        with torch.inference_mode():
            out[d] = {"all": reconstruction_metrics(codec, wavs), "first16": reconstruction_metrics(codec, wavs[:16])}
    return out


if __name__ == "__main__":
    raise SystemExit(main())
