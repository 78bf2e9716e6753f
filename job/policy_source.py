"""Where a run's base model and codec come from: the world's own base policy, or a MusicGen checkpoint.

The policy family is decided here once; nothing downstream asks which it is. The factories are picklable, so each
Ray actor builds the same model itself (the weights then arrive through the weights loop).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from divcfg.codec.musicgen import check_codec_matches
from divcfg.codec.offline import load_codec
from divcfg.model.loaders import load_policy
from divcfg.model.musicgen.loading import MusicGenLoadError
from divcfg.model.musicgen.policy import MusicGenSpec
from divcfg.reward.judges import Judges


@dataclass
class PolicySource:
    """What the roles of a run are built from."""

    base_policy: Any
    """The base model, built in this process: the learner's student and its CFG teacher start from it."""
    codec: Any
    """The codec the judges decode with in this process (None: the world's own, which the judges load)."""
    policy_factory: Callable
    """Builds the base model inside a rollout actor."""
    codec_factory: Callable | None
    """Builds the codec inside a reward worker (None: the world's)."""
    codec_meta: str | None
    """What the finetuned student's checkpoint records as its codec (None: the model's own)."""
    n_frames: int
    """Frames per sample (``algo.n_frames``, or the world's clip length)."""


def load_policy_source(cfg, world, heldout) -> PolicySource:
    """The policy source ``model.family`` names, checked against the world's clips and the codec it decodes with."""
    check_world_model(cfg, world)
    if cfg.model.family == "musicgen":
        source = _musicgen_source(cfg, world, heldout)
    else:
        base_dir = str(world.path("base").resolve())
        source = PolicySource(load_policy(base_dir), None, PolicyFactory(base_dir), None,
                              str(world.path("codec").resolve()), cfg.algo.n_frames or heldout.codes.shape[2])
    if source.n_frames > source.base_policy.cfg.max_frames:
        raise ValueError(f"algo.n_frames={source.n_frames} (0 = the world's clip length) is more frames than the "
                         f"model takes ({source.base_policy.cfg.max_frames}); set algo.n_frames lower")
    return source


def check_world_model(cfg, world) -> None:
    """A folder world's codes are its model's codec's: only that model trains on it (world.json says which)."""
    try:
        info = world.info()
    except (OSError, ValueError):
        return
    if info.get("kind") != "folder":
        return
    built_for, family = info.get("model"), info.get("model_family", "musicgen")
    if cfg.model.family != family:
        use = f"model=musicgen_small model.musicgen={built_for}" if family == "musicgen" else "the default model"
        raise ValueError(f"world.dir={world.root} is a folder world built for the {family} model {built_for}, and "
                         f"model.family={cfg.model.family}: its codes are that model's codec's; train with {use}")
    if family == "musicgen" and Path(str(cfg.model.musicgen)).expanduser().resolve() != Path(built_for).resolve():
        raise ValueError(f"model.musicgen={cfg.model.musicgen}: world.dir={world.root} was built for the MusicGen "
                         f"{built_for}, whose EnCodec made its codes; pass model.musicgen={built_for} or build a "
                         f"world for this model")


def _musicgen_source(cfg, world, heldout) -> PolicySource:
    # Every process builds the same model from the same source (the tiny random one from the run's seed).
    spec = MusicGenSpec.from_model_config(cfg.model, seed=cfg.run.seed)
    try:
        base_policy, codec = spec.build()
    except (MusicGenLoadError, ImportError) as e:  # the job's one-line error path takes ValueErrors
        raise ValueError(f"model.musicgen={spec.musicgen}: {e}") from None
    if cfg.codec.source == "world":  # checked below like the model's own: the world's 16 kHz codes never match
        codec = load_codec(world.path("codec"))
    check_codec_matches(codec, base_policy.model_config, spec.musicgen)  # the codec reward workers decode with
    # The world's clip length in seconds, at the model's own frame rate (MusicGen: 50 frames/s).
    clip_s = heldout.codes.shape[2] / float(heldout.meta["frame_rate"])
    return PolicySource(base_policy, codec, spec, spec.codec, None,
                        cfg.algo.n_frames or round(clip_s * codec.frame_rate))


class PolicyFactory:
    """Picklable: builds the base policy inside a Ray actor (weights then arrive through the weights loop)."""

    def __init__(self, path: str):
        self.path = path

    def __call__(self):
        return load_policy(self.path)


class JudgesFactory:
    """Picklable: loads the world's judges inside a reward worker, decoding with the world's codec or with the one
    ``codec_factory`` builds (the policy's own: MusicGen's EnCodec)."""

    def __init__(self, world_dir: str, codec_factory=None):
        self.world_dir = world_dir
        self.codec_factory = codec_factory

    def __call__(self):
        return Judges.load(self.world_dir, codec=self.codec_factory() if self.codec_factory is not None else None)
