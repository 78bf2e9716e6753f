"""MusicGen's own EnCodec behind :class:`divcfg.codec.offline.Codec`'s interface, and the check that a codec makes the
codes a MusicGen model was trained on."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from divcfg.codec.base import CodecBase

if TYPE_CHECKING:
    from transformers import MusicgenConfig


class UnsupportedMusicGenError(ValueError):
    """A MusicGen variant the adapter does not support (stereo, melody, an unexpected token layout)."""


class CodecMismatchError(ValueError):
    """A codec whose sample rate, frame rate or code grid differs from what the model was trained on."""



class MusicGenCodec(CodecBase):
    """MusicGen's EnCodec behind :class:`divcfg.codec.offline.Codec`'s interface: ``encode(wav [B, N]) -> codes
    [B, K, T]`` and ``decode(codes) -> wav [B, T * hop]``, mono, at the bandwidth that gives exactly K codebooks."""

    def __init__(self, audio_encoder, n_codebooks: int, name: str):
        cfg = audio_encoder.config
        if cfg.audio_channels != 1:
            raise UnsupportedMusicGenError(f"{name}: the EnCodec has audio_channels={cfg.audio_channels}; only mono")
        # Chunked or normalised EnCodec (the 48 kHz model) returns several frames and per-chunk scales that a plain
        # [B, K, T] code grid can't carry; MusicGen's 32 kHz EnCodec uses neither.
        if cfg.chunk_length_s is not None or cfg.normalize:
            raise UnsupportedMusicGenError(f"{name}: chunked or normalised EnCodec is not supported "
                                           f"(chunk_length_s={cfg.chunk_length_s}, normalize={cfg.normalize})")
        quantizer = audio_encoder.quantizer
        matching = [bw for bw in cfg.target_bandwidths if quantizer.get_num_quantizers_for_bandwidth(bw) == n_codebooks]
        if not matching:
            raise CodecMismatchError(f"{name}: no EnCodec bandwidth in {list(cfg.target_bandwidths)} gives the "
                                     f"decoder's {n_codebooks} codebooks")
        self.model = audio_encoder.eval().requires_grad_(False)
        self.bandwidth = matching[0]
        self.n_codebooks = n_codebooks
        self.name = name
        self.sample_rate: int = cfg.sampling_rate
        self.card: int = cfg.codebook_size
        self.hop_length: int = cfg.hop_length
        self.frame_rate: float = self.sample_rate / self.hop_length

    def _encode(self, wav: torch.Tensor) -> torch.Tensor:
        codes = self.model.encode(wav[:, None], bandwidth=self.bandwidth, return_dict=True).audio_codes
        return codes[0]  # [1 chunk, B, K, T] -> [B, K, T]

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.model.decode(codes[None], [None], return_dict=True).audio_values[:, 0]


def check_codec_matches(codec, config: "MusicgenConfig", name: str = "the model") -> None:
    """The codec must make the codes the model was trained on: same sample rate, frame rate, K and V. A codec from
    another model (the offline world's 16 kHz EnCodec, say) gives codes that mean nothing to MusicGen."""
    audio, d = config.audio_encoder, config.decoder
    expected = {"sample_rate": audio.sampling_rate, "frame_rate": audio.sampling_rate / audio.hop_length,
                "n_codebooks": d.num_codebooks, "card": d.vocab_size}
    for field, want in expected.items():
        got = getattr(codec, field)
        if got != want:
            raise CodecMismatchError(
                f"codec {getattr(codec, 'name', type(codec).__name__)} has {field}={got}, but {name} was trained on "
                f"{field}={want}: decode and encode with the model's own EnCodec (MusicGenCodec)")


def is_musicgen_dir(path: str | os.PathLike) -> bool:
    """A directory written by ``save_pretrained`` (or ``hf download``) of a MusicGen model: its config.json says
    ``model_type: musicgen``."""
    try:
        return json.loads((Path(path) / "config.json").read_text()).get("model_type") == "musicgen"
    except (OSError, ValueError, AttributeError):
        return False


def musicgen_codec_from_dir(path: str | os.PathLike) -> MusicGenCodec:
    """MusicGen's own EnCodec from a local MusicGen directory, read with ``from_pretrained`` and no network. The
    whole model is read once (its EnCodec lives inside the one safetensors file), then all but the EnCodec dropped."""
    # transformers is an optional extra (divcfg[musicgen]); only this loader needs it.
    from transformers import MusicgenForConditionalGeneration  # optional extra (divcfg[musicgen])

    if not is_musicgen_dir(path):
        raise UnsupportedMusicGenError(f"{path} is not a MusicGen directory: its config.json does not say "
                                       f"model_type: musicgen")
    try:
        model = MusicgenForConditionalGeneration.from_pretrained(str(path), local_files_only=True)
    except OSError as e:  # transformers' own words name the file, not what to do about it
        raise FileNotFoundError(f"could not load the MusicGen directory {path} ({e}). Copy the whole model directory "
                                f"(config.json, the weights, the tokenizer files), as `hf download ID --local-dir "
                                f"DIR` or save_pretrained writes it") from None
    if getattr(model.config, "model_type", None) != "musicgen":  # melody and stereo variants carry other types
        raise UnsupportedMusicGenError(f"{path}: model_type {model.config.model_type!r} is not supported")
    return MusicGenCodec(model.audio_encoder, model.config.decoder.num_codebooks, str(path))
