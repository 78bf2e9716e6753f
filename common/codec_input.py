"""The input checks every codec makes (the offline codec, MusicGen's EnCodec): wrong shapes or out-of-range codes
fail here with the shape or range in the message, not deep inside a convolution or an embedding lookup."""
from __future__ import annotations

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
