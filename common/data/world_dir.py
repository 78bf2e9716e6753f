"""A world directory: its stages, sizes, version and cached state, for every room that reads a built world.

The builder that writes these directories is :mod:`divcfg.world.build` (``divcfg world build``); the job, the
evaluation and the benchmarks only read them, through :class:`World`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from divcfg.common.data.prompts import load_prompts

# 2: the offline codec encodes log-mel frames; 3: judges use the common checkpoint layout;
# 4: several captions per training clip, word features in the text encoder (the base model now follows its prompt)
# 5: the text encoder is trained to read captions first, then frozen while the base model pretrains
# 6: codec version 2 (fitted spectrogram decoder); world.json gains codec figures and FAD; worlds record their kind
# (codec version 3, the decoder's learned head, kept version 6: a version-6 world's codec still decodes as it did)
WORLD_VERSION = 6
STAGES = ("corpus", "codec", "tokens", "base", "embedders", "scorer", "measure")
# What each stage leaves in the directory ("name/": a checkpoint directory); World.verify checks them.
STAGE_OUTPUTS = {"corpus": ("corpus.parquet", "prompts_heldout.txt"), "codec": ("codec/",),
                 "tokens": ("tokens.parquet", "heldout.parquet"), "base": ("base/",),
                 "embedders": ("embedder_reward/", "embedder_eval/"), "scorer": ("scorer/",),
                 "measure": ("world.json",)}
_NEEDS_AUDIO = ("corpus", "codec", "tokens", "embedders", "scorer")  # a resumed build skips synthesis otherwise

# Everything that differs between sizes. tiny: < 2 min on 2 cores (tests); small: < 20 min (quickstart, acceptance).
SIZES: dict[str, dict] = {
    "tiny": dict(n_clips=260, n_heldout=40, duration_s=2.0, card=64, fit_vectors=4000, kmeans_iters=8,
                 decoder_steps=0, head_steps=100, captions_per_clip=2, model="tiny", pretrain_steps=150,
                 pretrain_batch=16,
                 pretrain_lr=3e-3, text_steps=40, model_overrides=dict(freeze_text=True),
                 embedder="tiny", embedder_steps=60, embedder_clips=200, scorer="tiny", scorer_steps=60,
                 measure_prompts=6, measure_samples=4),
    # small: 9600 clips so that pretraining sees each about 8 times; with 3200 it memorised them (train loss 1.6,
    # held-out 3.0) and ignored the prompt.
    "small": dict(n_clips=9600, n_heldout=200, duration_s=3.0, card=256, fit_vectors=20000, kmeans_iters=15,
                  decoder_steps=0, head_steps=2500, captions_per_clip=3, model="small",
                  model_overrides=dict(dim=128, n_layers=4, n_heads=4, text_layers=2, freeze_text=True),
                  text_steps=200, pretrain_steps=3000, pretrain_batch=32, pretrain_lr=2e-3,
                  embedder="small", embedder_steps=250, embedder_clips=1200, scorer="small", scorer_steps=200,
                  measure_prompts=48, measure_samples=4),
}


class WorldError(ValueError):
    """A world directory or request that can't be used; the message names it."""


def size_params(size: str) -> dict:
    if size not in SIZES:
        raise WorldError(f"unknown world size {size!r}; known sizes: {', '.join(SIZES)}")
    return SIZES[size]


def codec_rate(spec: str | None, p: dict) -> dict:
    """Size parameters ``p`` with the codec's codebooks and codes per codebook from ``spec`` ("KxV", e.g. "8x1024";
    None: the size's own). The codebooks' fit draws as many latents per code as the size's does."""
    if spec is None:
        return dict(p)
    k, sep, v = spec.lower().partition("x")
    if not (sep and k.isdigit() and v.isdigit() and 1 <= int(k) <= 32 and 2 <= int(v) <= 4096):
        raise WorldError(f"--codec {spec!r}: expected KxV, K codebooks (1..32) of V codes (2..4096), e.g. 8x1024")
    return {**p, "n_codebooks": int(k), "card": int(v), "fit_vectors": p["fit_vectors"] * int(v) // p["card"]}


class World:
    """Paths and cached state of one world directory."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, name: str) -> Path:
        return self.root / name

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    def state(self) -> dict:
        if not self.state_file.is_file():
            return {}
        try:
            return json.loads(self.state_file.read_text())
        except json.JSONDecodeError as e:
            raise WorldError(f"world state {self.state_file} is corrupt ({e}); delete the directory to rebuild") from None

    def write_state(self, state: dict) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.state_file)

    def is_built(self) -> bool:
        return "measure" in self.state().get("done", {})

    def verify(self) -> None:
        """Every stage ``state.json`` records as built still has its files (a checkpoint directory with its COMPLETE
        marker). Raises :class:`WorldError` naming the first missing one and the stage that rebuilds it."""
        state = self.state()
        done, ident = state.get("done", {}), state.get("identity", {})
        for stage in (s for s in STAGES if s in done):
            for name in STAGE_OUTPUTS[stage]:
                f = self.path(name.rstrip("/"))
                if not ((f / "COMPLETE").is_file() if name.endswith("/") else f.is_file()):
                    what = "has no COMPLETE marker" if f.exists() else "is missing"
                    raise WorldError(
                        f"world {self.root}: {f} {what}, so stage {stage!r} must be rebuilt: remove {stage!r} from "
                        f"\"done\" in {self.state_file} (World.forget) and run `divcfg world build --out {self.root} "
                        f"--size {ident.get('size', '?')} --seed {ident.get('seed', 0)}`")

    def forget(self, stage: str) -> None:
        """Mark ``stage`` as not built, so the next build redoes it (and only it) from the stages before."""
        state = self.state()
        state.get("done", {}).pop(stage, None)
        self.write_state(state)

    def heldout_prompts(self) -> list[str]:
        return load_prompts(self.path("prompts_heldout.txt"))

    def info(self) -> dict:
        return json.loads(self.path("world.json").read_text())
