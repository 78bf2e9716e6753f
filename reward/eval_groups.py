"""Checkpoint groups for ``divcfg eval``: several seeds' runs of one configuration, evaluated as one row.

A group comes from ``--group NAME=CKPT,CKPT,...`` or from a ``divcfg train --multirun`` directory, whose jobs are
grouped by their command-line overrides except ``run.seed``. Every check runs before any model is sampled: a group
must hold one model shape, one world and one β, and that world must be the one being evaluated on.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from divcfg.common.tb_scalars import binned_curve, read_scalars

# Overrides that name where or how a job ran, not what it trained: they never split a multirun into groups.
_NOT_CONFIGURATION = ("run.seed=", "run.dir=", "run.resume=", "logging.", "hydra.")


@dataclass(frozen=True)
class Checkpoint:
    """A policy checkpoint and what its run's files say about it."""

    path: Path
    """The policy directory (config.json + weights)."""
    seed: int | None
    """``run.seed`` of the run that trained it (None: not saved beside it)."""
    beta: float | None
    """β it was trained with (the checkpoint's meta, else its run's config)."""
    world: str | None
    """The world directory it was trained on, resolved (from the codec it names)."""
    arch: dict = field(hash=False)
    """The policy's config.json ``config`` less ``preset``: two checkpoints merge only when these are equal."""
    train: dict = field(hash=False, default_factory=dict)
    """The run's summary.json figures a report needs (``kl_start``, ``kl_end``, ``wall_s``, ...), if present."""


def _run_dir(policy_dir: Path) -> Path | None:
    """The run directory above a policy: ``RUN/student`` or ``RUN/checkpoints/step_N/student``."""
    for up in (policy_dir.parent, *policy_dir.parents[1:3]):
        if (up / ".hydra" / "config.yaml").is_file() or (up / "summary.json").is_file():
            return up
    return None


def resolve_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint (a policy directory, or a run directory holding ``student/``) and its run's files."""
    p = Path(path)
    if not (p / "config.json").is_file() and (p / "student" / "config.json").is_file():
        p = p / "student"
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no policy checkpoint there (config.json), nor under {path}/student")
    header = json.loads((p / "config.json").read_text())
    if header.get("kind") != "policy":
        raise ValueError(f"{path}: config.json is a {header.get('kind')!r} checkpoint, not a policy")
    meta, run = header.get("meta", {}), _run_dir(p)
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml") if run and (run / ".hydra" / "config.yaml").is_file() else None
    summary = json.loads((run / "summary.json").read_text()) if run and (run / "summary.json").is_file() else {}
    seed = OmegaConf.select(cfg, "run.seed") if cfg is not None else None
    beta = meta.get("beta", OmegaConf.select(cfg, "algo.beta") if cfg is not None else None)
    # meta's codec: the world's codec the run decoded with; a relative one is relative to the checkpoint
    world = str((p / meta["codec"]).resolve().parent) if meta.get("codec") else summary.get("world")
    arch = {k: v for k, v in header.get("config", {}).items() if k != "preset"}
    train = {k: summary[k] for k in ("kl_start", "kl_end", "adherence_end", "diversity_end", "wall_s",
                                     "samples_per_s", "steps") if k in summary}
    if summary and (run / "tb").is_dir():
        train.update(training_curves(run))
    return Checkpoint(p, None if seed is None else int(seed), None if beta is None else float(beta),
                      None if world is None else str(Path(world).resolve()), arch, train)


CURVES = {"reward_curve": "rewards/diversity_mean", "kl_curve": "losses/distill_kl"}
"""The training curves a report shows per run: the diversity reward and the KL to the CFG teacher, per step."""


def training_curves(run: Path, bins: int = 10) -> dict:
    """A finished run's :data:`CURVES` from its TensorBoard events, each in ``bins`` step windows (their means)."""
    scalars = read_scalars(run)
    return {name: binned_curve(scalars[tag], bins) for name, tag in CURVES.items() if tag in scalars}


def parse_group(spec: str) -> tuple[str, list[str]]:
    """``NAME=CKPT,CKPT,...`` -> ``(NAME, [CKPT, ...])``."""
    name, sep, paths = spec.partition("=")
    ckpts = [c for c in paths.split(",") if c]
    if not sep or not name or not ckpts:
        raise ValueError(f"--group {spec!r}: expected NAME=CKPT,CKPT,... (several seeds' checkpoints of one "
                         f"configuration)")
    return name, ckpts


def multirun_groups(root: str | os.PathLike) -> dict[str, list[str]]:
    """The jobs of a ``divcfg train --multirun`` directory (``ROOT/<job number>/``), grouped by their overrides less
    ``run.seed``. A group is named by the overrides that tell it from the others (``algo.beta=15``)."""
    root = Path(root)
    jobs = sorted((d for d in root.iterdir() if d.is_dir() and d.name.isdigit()), key=lambda d: int(d.name)) \
        if root.is_dir() else []
    if not jobs:
        raise FileNotFoundError(f"--multirun {root}: no job directories (ROOT/0, ROOT/1, ...) there")
    keyed = {}
    for job in jobs:
        overrides = job / ".hydra" / "overrides.yaml"
        if not overrides.is_file():
            raise FileNotFoundError(f"--multirun {root}: job {job.name} has no .hydra/overrides.yaml")
        if not (job / "student" / "config.json").is_file():
            raise FileNotFoundError(f"--multirun {root}: job {job.name} has no student/ checkpoint (did it finish?)")
        key = tuple(sorted(o for o in OmegaConf.load(overrides) if not str(o).startswith(_NOT_CONFIGURATION)))
        keyed.setdefault(key, []).append(str(job / "student"))
    shared = set.intersection(*(set(k) for k in keyed)) if len(keyed) > 1 else set()
    return {(" ".join(o for o in key if o not in shared) or "multirun"): ckpts for key, ckpts in keyed.items()}


def check_group(name: str, ckpts: list[Checkpoint], world_dir: str | os.PathLike) -> None:
    """One model shape, one world (the evaluated one) and one β per group, and no seed twice; else a clear error."""
    world = str(Path(world_dir).resolve())
    first = ckpts[0]
    for c in ckpts:
        if c.world is not None and c.world != world:
            raise ValueError(f"--group {name}: {c.path} was trained on the world {c.world}, not --world {world}")
        if c.arch != first.arch:
            diff = {k: (first.arch.get(k), c.arch.get(k)) for k in set(first.arch) | set(c.arch)
                    if first.arch.get(k) != c.arch.get(k)}
            raise ValueError(f"--group {name}: {first.path} and {c.path} are different base models (config {diff})")
        if c.beta != first.beta:
            raise ValueError(f"--group {name}: {first.path} has β={first.beta} and {c.path} β={c.beta}; a group is "
                             f"one configuration's seeds")
    seeds = [c.seed for c in ckpts if c.seed is not None]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--group {name}: seeds {seeds} repeat; a group is one checkpoint per seed")


def seed_of(ckpt: Checkpoint, position: int) -> int:
    """The seed a checkpoint pairs by in merges: its run's ``run.seed``, else its position in the group."""
    return ckpt.seed if ckpt.seed is not None else position
