"""Checkpoint directories: safetensors weights plus a JSON config, written atomically, loaded without unpickling.

Layout of a checkpoint directory::

    config.json          {"kind": ..., "config": {...}, "meta": {...}}
    model.safetensors    the weights
    COMPLETE             written last; a directory without it is not a checkpoint

A directory is written under a temporary name and renamed into place, so a crash leaves either the old checkpoint
or the new one, never a mix.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

COMPLETE = "COMPLETE"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


class CheckpointError(ValueError):
    """A checkpoint that can't be loaded; the message names the path and what is wrong."""


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a temporary sibling directory; on success it replaces ``path`` and gets a COMPLETE marker."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        (tmp / COMPLETE).write_text("ok\n")
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def is_complete(path: str | os.PathLike) -> bool:
    return (Path(path) / COMPLETE).is_file()


def save_weights(dirpath: str | os.PathLike, kind: str, state_dict: dict[str, torch.Tensor], config: dict,
                 meta: dict | None = None) -> Path:
    """Write ``state_dict`` and ``config`` as a checkpoint directory of ``kind`` (e.g. "policy", "codec")."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    with atomic_dir(dirpath) as tmp:
        save_file(tensors, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(json.dumps({"kind": kind, "config": config, "meta": meta or {}}, indent=2))
    return Path(dirpath)


def load_weights(dirpath: str | os.PathLike, kind: str | None = None) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """Read a checkpoint directory -> ``(state_dict, config, meta)``. Every failure names the path."""
    path = Path(dirpath)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_file():
        raise CheckpointError(f"checkpoint path {path} is a file; pass the checkpoint directory that holds {CONFIG} "
                              f"and {WEIGHTS}")
    if not is_complete(path):
        raise CheckpointError(f"checkpoint {path} is incomplete (no {COMPLETE} marker): it was not fully written")
    try:
        header = json.loads((path / CONFIG).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint file not found: {path / CONFIG}") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint config {path / CONFIG} is corrupt: {e}") from None
    if kind is not None and header.get("kind") != kind:
        raise CheckpointError(f"checkpoint {path} holds a {header.get('kind')!r}, expected a {kind!r}")
    try:
        state = load_file(str(path / WEIGHTS))
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint file not found: {path / WEIGHTS}") from None
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"checkpoint weights {path / WEIGHTS} are truncated or corrupt: {e}") from None
    return state, header.get("config", {}), header.get("meta", {})


def snapshot_state(policy) -> dict[str, torch.Tensor]:
    """What a weight snapshot and a policy checkpoint carry: the whole state dict, or only the trainable tensors of a
    policy that has a ``trainable_state_dict`` (MusicGen: its frozen T5 is rebuilt from the source everywhere)."""
    trainable = getattr(policy, "trainable_state_dict", None)
    return trainable() if trainable is not None else policy.state_dict()


def load_snapshot(policy, state: dict[str, torch.Tensor]) -> None:
    """Load what :func:`snapshot_state` made into a policy of the same kind (strict for the whole-state kind)."""
    load = getattr(policy, "load_trainable_state_dict", None)
    if load is not None:
        load(state)
    else:
        policy.load_state_dict(state)


def save_policy(policy, dirpath: str | os.PathLike, meta: dict | None = None) -> Path:
    """A policy checkpoint. divcfg's own policy records its architecture and every tensor; MusicGen records its
    source (``family: musicgen``, Hub id or directory, ``train_layers``) and only the trainable tensors."""
    from dataclasses import asdict
    if hasattr(policy, "checkpoint_config"):
        return save_weights(dirpath, "policy", snapshot_state(policy), policy.checkpoint_config(), meta)
    return save_weights(dirpath, "policy", policy.state_dict(), asdict(policy.cfg), meta)


def policy_family(dirpath: str | os.PathLike) -> str:
    """``musicgen`` or ``divcfg``, from a policy checkpoint's config.json alone (no weights read). A directory that
    isn't a readable checkpoint reads as ``divcfg``: :func:`load_policy` then says what is wrong with it."""
    try:
        header = json.loads((Path(dirpath) / CONFIG).read_text())
        return str(header.get("config", {}).get("family", "divcfg"))
    except (OSError, ValueError, AttributeError):
        return "divcfg"


def load_musicgen_policy(dirpath: str | os.PathLike, device: str | torch.device = "cpu",
                         local_files_only: bool = False):
    """``(MusicGenPolicy, MusicGenCodec)`` from a MusicGen policy checkpoint: the model is rebuilt from the recorded
    source (downloaded or read from the Hugging Face cache, or the tiny random one) and the trained tensors loaded."""
    from divcfg.common.musicgen import MusicGenSpec
    state, config, _ = load_weights(dirpath, "policy")
    try:
        spec = MusicGenSpec.from_checkpoint_config(config, local_files_only)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {dirpath}: config.json does not describe a MusicGen policy: {e}") from None
    policy, codec = spec.build()
    try:
        policy.load_trainable_state_dict(state)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {dirpath}: {e}") from None
    return policy.to(device), codec.to(device)


def load_policy(dirpath: str | os.PathLike, device: str | torch.device = "cpu"):
    """A policy from a checkpoint directory written by :func:`save_policy`: an :class:`AudioTokenPolicy`, or a
    ``MusicGenPolicy`` for a ``family: musicgen`` checkpoint (see :func:`load_musicgen_policy`)."""
    from divcfg.common.policy import AudioTokenPolicy, PolicyConfig
    if policy_family(dirpath) == "musicgen":
        return load_musicgen_policy(dirpath, device)[0]
    state, config, _ = load_weights(dirpath, "policy")
    # Policies saved before word features and the pooled condition path have neither.
    config = {"text_word_buckets": 0, "cond_pool": False, **config}
    try:
        cfg = PolicyConfig(**config)
    except TypeError as e:
        raise CheckpointError(f"checkpoint {dirpath}: config.json does not describe a policy: {e}") from None
    policy = AudioTokenPolicy(cfg)
    missing, unexpected = policy.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {dirpath} does not match its config: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    return policy.to(device)
