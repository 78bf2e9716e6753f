"""Value checks of the composed configs that a schema can't express; each error names the bad field and value."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, get_type_hints

from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

ROLLOUT_DTYPES = ("fp32", "bf16")
# reward.embedder's names for the world's own embedders; any other value is the directory of a saved embedder (a
# directory named like one of these is passed as ./reward).
WORLD_EMBEDDERS = ("reward", "eval")


class ConfigError(ValueError):
    """A config value that can't be used; the message names the field."""


def check(condition: bool, name: str, value: Any, why: str) -> None:
    if not condition:
        raise ConfigError(f"{name}={value!r}: {why}")


def validate_model(m) -> None:
    """Value checks of a :class:`ModelConfig` (or its DictConfig)."""
    check(m.family in ("divcfg", "musicgen"), "model.family", m.family, "must be divcfg or musicgen")
    check(m.family != "musicgen" or bool(m.musicgen), "model.musicgen", m.musicgen,
          "model.family=musicgen needs a Hub id, a local directory or tiny-random")
    check(m.train_layers >= 0, "model.train_layers", m.train_layers, "must be >= 0 (0 = the whole decoder)")
    check(getattr(m, "decoder", "divcfg") in ("divcfg", "transformers"), "model.decoder", getattr(m, "decoder", None),
          "must be divcfg (MusicGen's weights in divcfg's fast decoder) or transformers (the adapter)")
    check(m.text_max_len >= 1, "model.text_max_len", m.text_max_len, "must be >= 1")


def validate_train(cfg) -> None:
    """Value checks that a schema can't express. ``cfg`` is the composed DictConfig or a TrainConfig."""
    validate_model(cfg.model)
    _check_run_and_codec(cfg)
    _check_algo(cfg.algo)
    _check_roles(cfg)
    _check_learner(cfg)


def _check_run_and_codec(cfg) -> None:
    for key in ("dir", "resume"):
        try:
            value = getattr(cfg.run, key)
        except InterpolationResolutionError:  # ${now:...}, which only Hydra resolves: not a URI
            continue
        check(value is None or "://" not in str(value), f"run.{key}", value,
              "object-storage URIs are not supported for run directories (checkpoints need local atomic renames); "
              "mount the bucket on every node and give the mount path")
    check(cfg.codec.source in ("auto", "world", "musicgen"), "codec.source", cfg.codec.source,
          "must be auto, world or musicgen")
    check(cfg.codec.source != "musicgen" or cfg.model.family == "musicgen", "codec.source", cfg.codec.source,
          f"MusicGen's EnCodec makes the codes of a MusicGen policy, and model.family={cfg.model.family}: use "
          f"model=musicgen_small (or _medium, _large, _tiny), or codec=world")


def _check_algo(a) -> None:
    check(a.beta >= 0, "algo.beta", a.beta, "must be >= 0")
    check(a.guidance_scale >= 1, "algo.guidance_scale", a.guidance_scale, "the CFG teacher needs γ >= 1")
    check(a.group_size >= 1, "algo.group_size", a.group_size, "must be >= 1")
    check(a.beta == 0 or a.group_size >= 2, "algo.group_size", a.group_size,
          f"must be >= 2 when algo.beta={a.beta} > 0: the diversity reward compares samples within a group")
    check(a.batch_prompts >= 1, "algo.batch_prompts", a.batch_prompts, "must be >= 1")
    check(a.lr > 0, "algo.lr", a.lr, "must be > 0")
    check(a.lr_schedule in ("constant", "cosine"), "algo.lr_schedule", a.lr_schedule, "must be constant or cosine")
    check(a.baseline in ("none", "mean", "loo"), "algo.baseline", a.baseline, "must be none, mean or loo")
    check(a.kl_reduction in ("mean", "sum"), "algo.kl_reduction", a.kl_reduction, "must be mean or sum")
    check(a.max_policy_lag >= 0, "algo.max_policy_lag", a.max_policy_lag, "must be >= 0")
    check(a.is_clip >= 1, "algo.is_clip", a.is_clip, "must be >= 1")
    check(a.temperature > 0, "algo.temperature", a.temperature, "must be > 0")


def _check_roles(cfg) -> None:
    check(cfg.world.size in ("tiny", "small"), "world.size", cfg.world.size, "must be tiny or small")
    check(cfg.world.kind in ("procedural", "music"), "world.kind", cfg.world.kind, "must be procedural or music")
    check(cfg.actors.count >= 1, "actors.count", cfg.actors.count, "must be >= 1")
    check(cfg.actors.spares >= 0, "actors.spares", cfg.actors.spares, "must be >= 0")
    check(cfg.reward.spares >= 0, "reward.spares", cfg.reward.spares, "must be >= 0")
    check(cfg.autoscale.min >= 0, "autoscale.min", cfg.autoscale.min, "must be >= 0")
    check(cfg.autoscale.max >= 0, "autoscale.max", cfg.autoscale.max, "must be >= 0 (0 turns autoscaling off)")
    if cfg.autoscale.max:
        check(cfg.autoscale.min <= cfg.autoscale.max, "autoscale.min", cfg.autoscale.min,
              f"must be <= autoscale.max={cfg.autoscale.max}")
    check(cfg.actors.num_gpus >= 0, "actors.num_gpus", cfg.actors.num_gpus, "must be >= 0")
    check(cfg.actors.groups_per_call >= 1, "actors.groups_per_call", cfg.actors.groups_per_call, "must be >= 1")
    check(cfg.actors.dtype in ROLLOUT_DTYPES, "actors.dtype", cfg.actors.dtype, f"must be one of {ROLLOUT_DTYPES}")
    check(cfg.reward.count >= 1, "reward.count", cfg.reward.count, "must be >= 1")
    # That a directory holds an embedder is checked where the embedder's format is known (job/train.py).
    check(cfg.reward.embedder in WORLD_EMBEDDERS or os.path.isdir(cfg.reward.embedder), "reward.embedder",
          cfg.reward.embedder, "must be reward or eval (the world's embedders) or the directory of a saved embedder "
          "(divcfg embedder train --out DIR), and there is no such directory")


def _check_learner(cfg) -> None:
    check(cfg.learner.steps >= 0, "learner.steps", cfg.learner.steps, "must be >= 0 (0 = the world's default)")
    check(cfg.learner.mode in ("async", "sync", "local"), "learner.mode", cfg.learner.mode,
          "must be async, sync or local")
    check(cfg.learner.device in ("auto", "cpu", "cuda"), "learner.device", cfg.learner.device,
          "must be auto, cpu or cuda")
    check(cfg.learner.workers >= 1, "learner.workers", cfg.learner.workers, "must be >= 1")
    check(cfg.algo.batch_prompts >= cfg.learner.workers, "algo.batch_prompts", cfg.algo.batch_prompts,
          f"must be >= learner.workers={cfg.learner.workers}: each worker's share is at least one whole group")
    check(cfg.learner.num_gpus >= 0, "learner.num_gpus", cfg.learner.num_gpus, "must be >= 0")
    check(cfg.learner.num_cpus >= 0, "learner.num_cpus", cfg.learner.num_cpus, "must be >= 0")
    check(cfg.learner.shard in ("none", "fsdp"), "learner.shard", cfg.learner.shard, "must be none or fsdp")
    check(cfg.probe.samples >= 2, "probe.samples", cfg.probe.samples, "diversity needs >= 2 samples per prompt")
    check(cfg.checkpoint.every >= 1, "checkpoint.every", cfg.checkpoint.every, "must be >= 1")


def refuse_unknown_keys(cfg, schema: type, where: str = "") -> None:
    """Every key of the composed ``cfg`` must be a field of the ``schema`` dataclass, at every level. Hydra's ``+key``
    adds a key that no schema declares, and nothing would ever read it: a typo such as ``+prompts=FILE`` would run
    the job without what the user asked for. Fields typed as dicts take any keys (``learner.resources``)."""
    hints = get_type_hints(schema)
    known = {f.name: hints.get(f.name) for f in dataclasses.fields(schema)}
    for key in cfg.keys():
        path = f"{where}{key}"
        if key not in known:
            raise ConfigError(f"{path}: unknown config key (added with '+'?); nothing reads it. Known keys"
                              f"{' of ' + where.rstrip('.') if where else ''}: {', '.join(sorted(known))}")
        kind = known[key]
        if dataclasses.is_dataclass(kind) and OmegaConf.is_dict(cfg[key]):
            refuse_unknown_keys(cfg[key], kind, f"{path}.")
