"""Policies to and from checkpoint directories: divcfg's own policy (its architecture and every tensor) and MusicGen
(its source and the trained tensors); the snapshot that the weights loop and checkpoints carry.

The files themselves (atomic directories, manifests, safetensors) are :mod:`divcfg.common.storage.checkpoint`'s.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from divcfg.common.storage.checkpoint import CONFIG, CheckpointError, load_weights, save_weights
from divcfg.model.musicgen.convert import check_decoder_fields
from divcfg.model.musicgen.policy import MusicGenSpec
from divcfg.model.policy import AudioTokenPolicy
from divcfg.model.policy_config import PolicyConfig


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


def is_musicgen_directory(dirpath: str | os.PathLike) -> bool:
    """Whether ``dirpath`` is a Hugging Face MusicGen model directory (``config.json`` with ``model_type:
    musicgen``, as ``save_pretrained`` or ``hf download`` write it), i.e. the user's base model rather than a divcfg
    checkpoint."""
    try:
        return json.loads((Path(dirpath) / "config.json").read_text()).get("model_type") == "musicgen"
    except (OSError, ValueError, AttributeError):
        return False


def load_musicgen_directory(dirpath: str | os.PathLike, decoder: str = "divcfg"):
    """``(MusicGenPolicy, MusicGenCodec)`` of a user's MusicGen directory as it is (the base model, its own
    EnCodec), read with ``from_pretrained`` from local files only."""
    return MusicGenSpec(str(Path(dirpath).expanduser().resolve()), local_files_only=True, decoder=decoder).build()


def load_musicgen_policy(dirpath: str | os.PathLike, device: str | torch.device = "cpu",
                         local_files_only: bool = False, decoder: str = "divcfg"):
    """``(MusicGenPolicy, MusicGenCodec)`` from a MusicGen policy checkpoint: the model is rebuilt from the recorded
    source (downloaded or read from the Hugging Face cache, or the tiny random one) and the trained tensors loaded."""
    state, config, _ = load_weights(dirpath, "policy")
    try:
        spec = MusicGenSpec.from_checkpoint_config(config, local_files_only, decoder)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {dirpath}: config.json does not describe a MusicGen policy: {e}") from None
    policy, codec = spec.build()
    try:
        check_decoder_fields(config.get("decoder_config", {}), policy.model_config.decoder, str(dirpath))
        policy.load_trainable_state_dict(state)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {dirpath}: {e}") from None
    return policy.to(device), codec.to(device)


def save_musicgen_pretrained(policy, codec, dirpath: str | os.PathLike, tokenizer=None) -> Path:
    """A MusicGen policy (either decoder) as a directory that ``MusicgenForConditionalGeneration.from_pretrained``
    reads: its tensors under MusicGen's names (:meth:`MusicGenPolicy.musicgen_state_dict`, the converted decoder
    mapped back exactly), the codec's EnCodec, and the tokenizer when given."""
    from transformers import MusicgenForConditionalGeneration  # optional extra (divcfg[musicgen])

    state = {**policy.musicgen_state_dict(), **{f"audio_encoder.{k}": v for k, v in codec.model.state_dict().items()}}
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten by ``state``
        model = MusicgenForConditionalGeneration(policy.model_config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{policy.cfg.name}: tensors do not fit MusicGen: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    model.save_pretrained(dirpath)
    if tokenizer is not None:
        tokenizer.save_pretrained(dirpath)
    return Path(dirpath)


def load_policy(dirpath: str | os.PathLike, device: str | torch.device = "cpu"):
    """A policy from a checkpoint directory written by :func:`save_policy`: an :class:`AudioTokenPolicy`, or a
    ``MusicGenPolicy`` for a ``family: musicgen`` checkpoint (see :func:`load_musicgen_policy`)."""
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
