"""The training views of the music embedder and the scorer: pairs of chunks of one clip, and the augmentations
(noise, tempo, pitch) that make two views of one clip differ in what the embedding should ignore.

Shapes: B or N clips, S samples per clip, M mel bins, F frames.
"""
from __future__ import annotations

import numpy as np
import torch


def add_noise(wav: torch.Tensor, generator: torch.Generator, snr_db: tuple[float, float]) -> torch.Tensor:
    """``[B, N]`` plus white noise at a per-clip SNR (dB) drawn uniformly from ``snr_db`` -> ``[B, N]``."""
    B = wav.shape[0]
    lo, hi = snr_db
    snr = (lo + (hi - lo) * torch.rand(B, generator=generator, device=generator.device)).to(wav.device)
    power = wav.pow(2).mean(dim=1).clamp_min(1e-10)
    noise = torch.randn(wav.shape, generator=generator, device=generator.device).to(wav.device)
    return wav + noise * (power / 10 ** (snr / 10)).sqrt()[:, None]


def tempo_shift(mel: torch.Tensor, generator: torch.Generator, max_change: float) -> torch.Tensor:
    """Stretch each log-mel ``[B, M, F]`` in time by a factor in ``1 ± max_change`` -> ``[B, M, F]``.

    Stretching the mel (linear interpolation between frames, anchored at the centre, edges repeated) changes tempo
    without changing pitch, which resampling the waveform would.
    """
    B, M, F_ = mel.shape
    rate = 1 + max_change * (2 * torch.rand(B, generator=generator, device=generator.device) - 1)
    centre = (F_ - 1) / 2
    frames = torch.arange(F_, dtype=mel.dtype, device=mel.device)
    pos = (centre + (frames - centre) * rate.to(mel.device)[:, None]).clamp(0, F_ - 1)  # [B, F]
    lo = pos.floor().long().clamp(max=F_ - 2)
    w = (pos - lo)[:, None, :]
    lo = lo[:, None, :].expand(B, M, F_)
    return mel.gather(2, lo) * (1 - w) + mel.gather(2, lo + 1) * w


def pitch_shift(mel: torch.Tensor, generator: torch.Generator, max_bins: int) -> torch.Tensor:
    """Shift each log-mel ``[B, M, F]`` up or down by an integer number of mel bins in ``±max_bins`` (edge bins
    repeated) -> ``[B, M, F]``. On the mel scale a bin shift is close to a constant pitch interval above ~1 kHz."""
    B, M, F_ = mel.shape
    k = torch.randint(-max_bins, max_bins + 1, (B,), generator=generator, device=generator.device).to(mel.device)
    src = (torch.arange(M, device=mel.device)[None, :] - k[:, None]).clamp(0, M - 1)  # [B, M]
    return mel.gather(1, src[:, :, None].expand(B, M, F_))


def random_chunk_pairs(clips: torch.Tensor, chunk_samples: int,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two non-overlapping chunks from each clip of ``clips [N, S]`` -> ``(a, b)``, each ``[N, chunk_samples]``.

    Which chunk comes first in the clip is random, so ``a`` is not always the earlier one.
    """
    if clips.dim() != 2:
        raise ValueError(f"random_chunk_pairs expects clips [N, S], got shape {tuple(clips.shape)}")
    N, S = clips.shape
    c = chunk_samples
    if S < 2 * c:
        raise ValueError(f"clips of {S} samples are too short for two non-overlapping chunks of {c} samples "
                         f"(need at least {2 * c})")
    dev = generator.device
    # Two offsets into the slack; the second chunk starts a full chunk after the larger one, so they never overlap.
    offsets = torch.randint(0, S - 2 * c + 1, (N, 2), generator=generator, device=dev).sort(dim=1).values
    starts = offsets + torch.tensor([0, c], device=dev)  # [N, 2]
    swap = torch.rand(N, generator=generator, device=dev) < 0.5
    starts = torch.where(swap[:, None], starts.flip(1), starts).to(clips.device)
    idx = starts[:, :, None] + torch.arange(c, device=clips.device)  # [N, 2, c]
    pairs = clips.gather(1, idx.view(N, 2 * c)).view(N, 2, c)
    return pairs[:, 0], pairs[:, 1]


def as_clips(clips: np.ndarray | torch.Tensor, name: str = "clips") -> torch.Tensor:
    """Float array ``[N, S]`` (numpy or torch) -> float32 tensor ``[N, S]``."""
    t = torch.as_tensor(np.asarray(clips) if not isinstance(clips, torch.Tensor) else clips)
    if t.dim() != 2 or not t.is_floating_point():
        raise ValueError(f"{name} must be a float array [N, samples], got {t.dtype} {tuple(t.shape)}")
    return t.float()
