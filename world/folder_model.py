"""The model a folder world is built for (``--model``), used as it is: the user's MusicGen directory, or a divcfg
policy with its offline codec (a built world's ``base/`` and ``codec/``, e.g. ``worlds/music_small``).

Either one decides the clip the folder is cut into (the codec's rate, its frame rate, as many frames as the model
takes) and the codec that makes the world's codes. A MusicGen stays where it is (world.json names its directory); a
divcfg policy and its codec are copied into the world (``base/``, ``codec/``), so that training and evaluation find
them where every divcfg world keeps them.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from divcfg.codec.musicgen import is_musicgen_dir, musicgen_codec_from_dir
from divcfg.common.data.world_dir import World, WorldError

MUSICGEN, DIVCFG = "musicgen", "divcfg"
DEFAULT_CLIP_S = 10.0
"""A MusicGen's default clip; a divcfg policy's is the clip it was pretrained on (its ``max_frames``)."""


@dataclass(frozen=True)
class ModelClip:
    """The clip length a model can take, from its config (MusicGen's config.json, or the policy's and codec's)."""

    sample_rate: int
    """The codec's rate (Hz): the folder is resampled to it."""
    frame_rate: float
    """Code frames per second."""
    n_codebooks: int
    card: int
    frames: int
    """T, frames per clip: the requested length, capped at what the model takes."""
    max_frames: int
    """MusicGen: ``max_position_embeddings - num_codebooks + 1`` (the delayed codes, T + K - 1, must fit); a divcfg
    policy: its ``max_frames``."""
    requested_s: float
    family: str = MUSICGEN
    """:data:`MUSICGEN` or :data:`DIVCFG`."""

    @property
    def clip_s(self) -> float:
        return self.frames / self.frame_rate


def is_divcfg_model(path: Path) -> bool:
    """A built divcfg world holding a policy and its codec, both complete (``base/COMPLETE``, ``codec/COMPLETE``)."""
    return (path / "base" / "COMPLETE").is_file() and (path / "codec" / "COMPLETE").is_file()


def model_family(path: Path) -> str:
    """:data:`MUSICGEN` or :data:`DIVCFG` for ``--model path``; anything else is refused saying what it is."""
    if is_musicgen_dir(path):
        return MUSICGEN
    if is_divcfg_model(path):
        return DIVCFG
    raise WorldError(f"--model {path} is neither a MusicGen directory (what save_pretrained or `hf download "
                     f"facebook/musicgen-small --local-dir DIR` writes) nor a divcfg world with a base model and its "
                     f"codec (base/, codec/): {describe_dir(path)}")


def describe_dir(path: Path) -> str:
    """What ``path`` is, for the error refusing it: missing, a file, an unfinished divcfg world, or the model its
    config names."""
    if not path.exists():
        return "it does not exist"
    if not path.is_dir():
        return "it is a file, not a directory"
    if World(path).state_file.is_file():
        try:
            kind = World(path).state().get("identity", {}).get("kind", "procedural")
        except WorldError:
            kind = "unknown: its state.json is corrupt"
        what = "a folder world (its model is the one it was built for)" if kind == "folder" else \
            f"a divcfg world (kind {kind}) without a complete base/ and codec/ (is its build finished?)"
        return f"it is {what}"
    config = path / "config.json"
    if config.is_file():
        try:
            meta = json.loads(config.read_text())
        except (ValueError, UnicodeDecodeError):
            return "its config.json is not valid JSON"
        model_type = meta.get("model_type") if isinstance(meta, dict) else None
        return (f"its config.json names a {model_type!r} model, not 'musicgen' (text-only, mono MusicGen)"
                if model_type else "its config.json names no model_type")
    held = sorted(p.name for p in path.iterdir())
    return f"it holds no config.json (it holds {', '.join(held[:8]) + (', ...' if len(held) > 8 else '') or 'nothing'})"


def model_clip(model_dir: Path, clip_s: float | None) -> ModelClip:
    """The clip length (``clip_s`` in whole frames; default :data:`DEFAULT_CLIP_S` for a MusicGen, the pretrained
    clip for a divcfg policy) that ``model_dir``'s model can take."""
    family = model_family(model_dir)
    if family == MUSICGEN:
        from transformers import AutoConfig  # optional extra (divcfg[musicgen])

        from divcfg.model.musicgen.loading import check_supported
        config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
        check_supported(config, str(model_dir))
        audio, decoder = config.audio_encoder, config.decoder
        rate, frame_rate = int(audio.sampling_rate), audio.sampling_rate / audio.hop_length
        k, card = decoder.num_codebooks, decoder.vocab_size
        # The decoder reads the delayed codes: T frames take T + K - 1 positions.
        max_frames = decoder.max_position_embeddings - decoder.num_codebooks + 1
        default_s = DEFAULT_CLIP_S
    else:
        from divcfg.codec.offline import load_codec
        codec = load_codec(model_dir / "codec")
        policy = json.loads((model_dir / "base" / "config.json").read_text())["config"]
        if (policy["n_codebooks"], policy["card"]) != (codec.n_codebooks, codec.card):
            raise WorldError(f"--model {model_dir}: its base model reads {policy['n_codebooks']} x {policy['card']} "
                             f"codes, its codec makes {codec.n_codebooks} x {codec.card}")
        rate, frame_rate, k, card = codec.sample_rate, codec.frame_rate, codec.n_codebooks, codec.card
        max_frames = int(policy["max_frames"])
        default_s = max_frames / frame_rate
    requested = default_s if clip_s is None else float(clip_s)
    frames = min(int(requested * frame_rate + 1e-6), max_frames)
    if not frames >= 1:
        raise WorldError(f"--clip-s {requested:g}: shorter than one frame of {model_dir} ({frame_rate:g} frames/s)")
    return ModelClip(rate, frame_rate, k, card, frames, max_frames, requested, family)


def model_codec(model_dir: str | os.PathLike, family: str):
    """The codec that makes the world's codes: the MusicGen's EnCodec, or the divcfg policy's offline codec."""
    if family == MUSICGEN:
        return musicgen_codec_from_dir(model_dir)
    from divcfg.codec.offline import load_codec
    return load_codec(Path(model_dir) / "codec")


def copy_checkpoint(source: Path, target: Path) -> None:
    """``source`` (a complete checkpoint directory) to ``target``, written beside it and renamed into place, so
    that a build stopped mid-copy leaves no half directory that looks complete."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
