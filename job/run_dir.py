"""A run's directory: which checkpoint a run continues from, the checkpoints it writes, and what a resume restores."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict

from divcfg.common.storage.checkpoint import atomic_dir, load_weights, newest_verified_checkpoint
from divcfg.common.storage.train_state import load_train_state, restore_rng, rng_state, save_train_state
from divcfg.model.loaders import save_policy

# The method's settings: a resumed run must keep them; anything else may change.
METHOD_KEYS = ["algo.beta", "algo.guidance_scale", "algo.group_size", "algo.baseline", "algo.kl_reduction",
               "world.size", "world.seed", "model.family"]
# What runs saved before these keys existed used: divcfg runs with the mean KL and a constant rate.
OLD_DEFAULTS = {"model.family": "divcfg", "algo.kl_reduction": "mean", "algo.lr_schedule": "constant"}
# Keys a resume takes from the resumed run unless the command line sets them: a run keeps what it trained with
# when a default changes.
INHERITED_KEYS = ("algo.kl_reduction", "algo.lr_schedule")


def job_run_dir(cfg) -> Path:
    """``run.dir``; under ``--multirun`` each job gets its own ``run.dir/<job number>`` (Hydra's job directory), so
    the runs of a sweep never share checkpoints, TensorBoard files or summary.json."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        with open_dict(cfg):
            cfg.run.dir = HydraConfig.get().runtime.output_dir
    return Path(cfg.run.dir)


def complete_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Checkpoints that were fully written (they carry a COMPLETE marker), oldest first; not yet verified."""
    return sorted(p for p in (Path(run_dir) / "checkpoints").glob("step_*") if (p / "COMPLETE").is_file())


def resolve_resume(run_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint to continue from, or None for a fresh start.

    ``run.resume=DIR`` continues DIR's newest checkpoint that verifies (an error when it has none). ``run.resume=auto``
    continues ``run.dir``'s own when it has one and starts fresh when it has none: what a retried or preempted job
    passes. A run never starts over a ``run.dir`` that already holds another run's checkpoints, since its own would
    replace them step by step.
    """
    holds = complete_checkpoints(run_dir)
    if resume == "auto":
        resume_from = _newest_verified(run_dir, "run.dir") if holds else None
    else:
        resume_from = latest_checkpoint(resume) if resume else None
    if holds and (resume_from is None or resume_from.parent.parent.resolve() != run_dir.resolve()):
        raise ValueError(f"run.dir={run_dir} already holds a run (checkpoint {holds[-1].name}); writing to it would "
                         f"replace those checkpoints. Continue it with run.resume={run_dir} (or run.resume=auto), "
                         f"or pick a new run.dir")
    return resume_from


def latest_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The newest checkpoint of a run that verifies; a clear error when there is none."""
    ckdir = Path(run_dir) / "checkpoints"
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"run.resume={run_dir}: no such run directory (is it reachable from this node?)")
    newest = _newest_verified(run_dir, "run.resume") if complete_checkpoints(run_dir) else None
    if newest is None:
        raise FileNotFoundError(f"run.resume={run_dir}: no complete checkpoint under {ckdir}")
    return newest


def _newest_verified(run_dir: str | os.PathLike, key: str) -> Path | None:
    """The newest checkpoint that passes its manifest; each newer one skipped is named, with why."""
    newest, skipped = newest_verified_checkpoint(run_dir)
    for ck, why in skipped:
        print(f"{key}: skipping checkpoint {ck.name}: {why}", file=sys.stderr, flush=True)
    return newest


# The config a checkpoint was trained with, inside it: the run directory's .hydra/config.yaml is rewritten by every
# invocation in that directory, so after `run.resume=auto` it no longer says what the resumed steps trained with.
RUN_CONFIG = "config.yaml"


def check_resume_config(resume_dir: Path, cfg, set_on_command_line: set[str] | None = None,
                        checkpoint: Path | None = None) -> bool:
    """The method's settings and the rate's schedule must match the run being resumed; anything else may change.

    The resumed run's settings are the ``checkpoint``'s own :data:`RUN_CONFIG`, or for a checkpoint saved without
    one, ``resume_dir/.hydra/config.yaml`` (which a resume in place has already overwritten with its own).
    A key of :data:`INHERITED_KEYS` not set on the command line (``set_on_command_line``; None: not known, so every
    key counts as set) is taken from the resumed run instead: a run saved before the key existed, or under an older
    default, keeps what it trained with (mean KL, constant rate). Returns whether ``cfg`` was changed so."""
    saved = checkpoint / RUN_CONFIG if checkpoint is not None else None
    if saved is None or not saved.is_file():
        saved = resume_dir / ".hydra" / "config.yaml"
    if not saved.is_file():
        return False
    old = OmegaConf.load(saved)
    keys = METHOD_KEYS + (["model.musicgen", "model.train_layers"] if cfg.model.family == "musicgen" else [])
    changed = False
    for key in keys + ["algo.lr_schedule"]:
        a, b = (OmegaConf.select(c, key, default=OLD_DEFAULTS.get(key)) for c in (old, cfg))
        if a == b:
            continue
        if key in INHERITED_KEYS and set_on_command_line is not None and key not in set_on_command_line:
            OmegaConf.update(cfg, key, a)
            print(f"divcfg train: resuming {resume_dir} with its {key}={a} (the default is {b})")
            changed = True
        else:
            raise ValueError(f"run.resume={resume_dir}: {key}={b!r} conflicts with the resumed run's {key}={a!r}"
                             + ("; a resume keeps the rate's schedule (start a new run.dir to change it)"
                                if key == "algo.lr_schedule" else ""))
    return _check_resume_length(resume_dir, old, cfg, set_on_command_line) or changed


def _check_resume_length(resume_dir: Path, old, cfg, set_on_command_line: set[str] | None) -> bool:
    """A cosine rate follows the learner's version over ``learner.steps``: resumed with another length it would jump
    mid-curve, so a cosine run keeps its length (taken from the resumed run when the command line does not set it).
    A constant-rate run may be extended freely. Returns whether ``cfg`` was changed."""
    steps_a, steps_b = OmegaConf.select(old, "learner.steps"), OmegaConf.select(cfg, "learner.steps")
    if OmegaConf.select(cfg, "algo.lr_schedule", default="constant") != "cosine" or steps_a in (None, steps_b):
        return False  # (None: a saved config without the key says nothing of the run's length)
    if set_on_command_line is not None and "learner.steps" not in set_on_command_line:
        OmegaConf.update(cfg, "learner.steps", steps_a)
        print(f"divcfg train: resuming {resume_dir} with its learner.steps={steps_a} (its cosine rate decays over "
              f"them)")
        return True
    raise ValueError(f"run.resume={resume_dir}: learner.steps={steps_b!r} conflicts with the resumed run's "
                     f"learner.steps={steps_a!r}: its cosine rate decays over that many steps, so another length "
                     f"would jump the rate mid-curve (keep learner.steps={steps_a}, or start a new run.dir)")


def check_resume(resume_from: Path, run_dir: Path, cfg) -> None:
    """:func:`check_resume_config` against the resumed run, with the keys this command line sets; a setting taken
    from the resumed run goes into this run's saved config too, which says what it trains with."""
    if check_resume_config(resume_from.parent.parent, cfg, _command_line_keys(), resume_from) and (
            run_dir / ".hydra").is_dir():
        OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")


def _command_line_keys() -> set[str] | None:
    """The config keys this Hydra run's command line sets (None outside Hydra)."""
    if not HydraConfig.initialized():
        return None
    return {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task}


def save_checkpoint(run_dir: Path, learner, step: int, stream, acct, keep: int, cfg=None) -> None:
    """``checkpoints/step_<step>``: the student (safetensors), the train state (no pickle) and the run's config
    ``cfg`` (:data:`RUN_CONFIG`, what a resume is checked against), written whole or not at all; then only the
    newest ``keep`` complete checkpoints are kept."""

    ckdir = run_dir / "checkpoints"
    with atomic_dir(ckdir / f"step_{step:06d}") as tmp:
        save_policy(learner.student, tmp / "student")
        save_train_state(tmp, {**learner.state(), "step": step, "stream_position": stream.position,
                               "rng": rng_state(),
                               "accounting": {k: v for k, v in vars(acct).items() if k != "lags"}})
        if cfg is not None:
            OmegaConf.save(cfg, tmp / RUN_CONFIG)
    for old in complete_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def restore(checkpoint: Path, learner, stream, allow_pickle: bool = False) -> tuple[int, list[int]]:
    """Load a checkpoint into the learner, the prompt stream and the random generators; returns the step it was saved
    at and the prompts it had drawn but not used (``acct.outstanding``), which the resumed run generates first."""
    step, outstanding, _ = restore_run(checkpoint, learner, stream, allow_pickle)
    return step, outstanding


def restore_run(checkpoint: Path, learner, stream, allow_pickle: bool = False) -> tuple[int, list[int], dict]:
    """:func:`restore`, and the books as of the checkpoint (``{}`` when it has none): what a run that rolls back to
    it in place (a lost learner) goes on counting from."""

    state = load_train_state(checkpoint, allow_pickle=allow_pickle)
    student_state, _, _ = load_weights(checkpoint / "student", "policy")
    learner.load_state(student_state, state)
    stream.position = int(state["stream_position"])
    if "rng" in state:
        restore_rng(state["rng"])
    else:  # the old pickled format saved torch's generator only
        torch.set_rng_state(state["torch_rng"])
    books = dict(state.get("accounting", {}))
    return int(state["step"]), list(books.get("outstanding", [])), books


def newest_checkpoint(run_dir: Path) -> Path | None:
    """This run's newest checkpoint that verifies, or None while it has none."""
    return _newest_verified(run_dir, "run.dir") if complete_checkpoints(run_dir) else None
