"""MusicGen's own EnCodec behind :class:`divcfg.common.codec.Codec`'s interface, and the check that a codec makes the
codes a MusicGen model was trained on."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from divcfg.common.codec_input import audio_input, codes_input
from divcfg.common.musicgen_model import UnsupportedMusicGenError

if TYPE_CHECKING:
    from transformers import MusicgenConfig


class CodecMismatchError(ValueError):
    """A codec whose sample rate, frame rate or code grid differs from what the model was trained on."""



class MusicGenCodec:
    """MusicGen's EnCodec behind :class:`divcfg.common.codec.Codec`'s interface: ``encode(wav [B, N]) -> codes
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

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device) -> "MusicGenCodec":
        self.model.to(device)
        return self

    def n_frames(self, n_samples: int) -> int:
        return math.ceil(n_samples / self.hop_length)

    @torch.inference_mode()
    def encode(self, wav: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Mono ``wav [B, N]`` float at ``self.sample_rate`` -> codes ``[B, K, T]`` long, ``T = ceil(N / hop)``."""
        wav = audio_input(wav, self.device)
        codes = self.model.encode(wav[:, None], bandwidth=self.bandwidth, return_dict=True).audio_codes
        return codes[0]  # [1 chunk, B, K, T] -> [B, K, T]

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Codes ``[B, K, T]`` -> mono ``wav [B, T * hop]`` float."""
        codes = codes_input(codes, self.n_codebooks, self.card, self.device)
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
