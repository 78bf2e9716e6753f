"""What every codec shares (the offline codec and EnCodec 24 kHz in :mod:`divcfg.codec.offline`, MusicGen's EnCodec in
:mod:`divcfg.codec.musicgen`): the ``encode``/``decode`` interface, and the input checks, so that wrong shapes or
out-of-range codes fail here with the shape or range in the message, not deep inside a convolution or an embedding
lookup."""
from __future__ import annotations

import math

import numpy as np
import torch


def audio_input(wav: torch.Tensor | np.ndarray, device) -> torch.Tensor:
    """Mono audio ``[B, N]`` as float32 on ``device``; any other rank is refused."""
    wav = torch.as_tensor(wav, dtype=torch.float32, device=device)
    if wav.dim() != 2:
        raise ValueError(f"codec.encode expects mono audio [B, N], got shape {tuple(wav.shape)}")
    return wav


def codes_input(codes: torch.Tensor | np.ndarray, n_codebooks: int, card: int, device) -> torch.Tensor:
    """Codes ``[B, K, T]`` as long on ``device``, with ``K == n_codebooks`` and every code in ``[0, card)``."""
    codes = torch.as_tensor(np.asarray(codes) if not torch.is_tensor(codes) else codes, device=device).long()
    if codes.dim() != 3 or codes.shape[1] != n_codebooks:
        raise ValueError(f"codec.decode expects codes [B, K={n_codebooks}, T], got {tuple(codes.shape)}")
    if codes.numel() and (codes.min() < 0 or codes.max() >= card):
        raise ValueError(f"codes outside [0, {card}) cannot be decoded: [{codes.min()}, {codes.max()}]")
    return codes


class CodecBase:
    """``encode(wav [B, N]) -> codes [B, K, T]`` and ``decode(codes) -> wav [B, T * hop]``, mono, batched.

    A subclass sets ``model``, ``n_codebooks``, ``card``, ``sample_rate``, ``hop_length`` and ``frame_rate`` and
    implements ``_encode(wav [B, N])`` and ``_decode(codes [B, K, T])`` on checked inputs.
    """

    model: torch.nn.Module
    n_codebooks: int
    card: int
    sample_rate: int
    hop_length: int
    frame_rate: float

    @property
    def device(self) -> torch.device:
        # Buffers first: the offline mel codec has buffers (codebooks) and no parameters.
        for t in self.model.buffers():
            return t.device
        return next(self.model.parameters()).device

    def to(self, device):
        self.model.to(device)
        return self

    def n_frames(self, n_samples: int) -> int:
        return math.ceil(n_samples / self.hop_length)

    @torch.inference_mode()
    def encode(self, wav: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Mono ``wav [B, N]`` float at ``self.sample_rate`` -> codes ``[B, K, T]`` long, ``T = ceil(N / hop)``."""
        return self._encode(audio_input(wav, self.device))

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Codes ``[B, K, T]`` -> mono ``wav [B, T * hop]`` float."""
        return self._decode(codes_input(codes, self.n_codebooks, self.card, self.device))

    def _encode(self, wav: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
