"""MusicGen's delay interleaving pattern, as pure tensor functions.

Codebook k of a ``[B, K, T]`` code grid is shifted right by k steps, giving a sequence of ``S = T + K - 1`` columns.
At column s the model predicts every codebook at once; codebook k then refers to frame ``t = s - k``. Cells outside
``0 <= s - k < T`` hold the special token (index ``card``), which is never sampled and never scored.
"""
from __future__ import annotations

import torch


def delayed_length(n_frames: int, n_codebooks: int) -> int:
    """Sequence length S of a delayed grid for T frames and K codebooks."""
    return n_frames + n_codebooks - 1


def delay_valid_mask(n_codebooks: int, n_frames: int, device=None) -> torch.Tensor:
    """``[K, S]`` bool: True where column s of codebook k holds a real code (frame ``s - k``)."""
    s = torch.arange(delayed_length(n_frames, n_codebooks), device=device)
    k = torch.arange(n_codebooks, device=device)[:, None]
    t = s[None, :] - k
    return (t >= 0) & (t < n_frames)


def delay(codes: torch.Tensor, special: int) -> torch.Tensor:
    """``codes [B, K, T]`` -> delayed ``[B, K, T + K - 1]``; cells with no frame hold ``special``."""
    assert codes.dim() == 3, f"expected codes [B, K, T], got {tuple(codes.shape)}"
    b, k, t = codes.shape
    s = delayed_length(t, k)
    frame = torch.arange(s, device=codes.device)[None, :] - torch.arange(k, device=codes.device)[:, None]  # [K, S]
    valid = (frame >= 0) & (frame < t)
    index = frame.clamp(0, t - 1)[None].expand(b, k, s)
    out = torch.gather(codes, 2, index)
    return torch.where(valid[None], out, torch.full_like(out, special))


def undelay(seq: torch.Tensor, n_frames: int) -> torch.Tensor:
    """Inverse of :func:`delay` along dim 2: ``[B, K, S, *rest]`` -> ``[B, K, T, *rest]``.

    Works on codes and on per-column tensors such as logits ``[B, K, S, V]``: frame t of codebook k is column t + k.
    """
    b, k, s = seq.shape[:3]
    assert s == delayed_length(n_frames, k), f"sequence length {s} != T + K - 1 = {n_frames + k - 1}"
    col = torch.arange(n_frames, device=seq.device)[None, :] + torch.arange(k, device=seq.device)[:, None]  # [K, T]
    index = col.view(1, k, n_frames, *([1] * (seq.dim() - 3))).expand(b, k, n_frames, *seq.shape[3:])
    return torch.gather(seq, 2, index)


def teacher_forced_columns(codes: torch.Tensor, special: int, n_codebooks: int, max_frames: int) -> torch.Tensor:
    """``codes [B, K, T]`` -> the delayed input columns ``[B, K, T + K - 1]`` of one teacher-forced forward: BOS
    (``special``) then the delayed codes shifted right by one, so the output at column s predicts delayed column s.
    The policy's checks live here because every family's ``logits`` feeds its decoder through this one function."""
    b, k, t = codes.shape
    assert k == n_codebooks, f"codes have {k} codebooks, model has {n_codebooks}"
    assert t <= max_frames, f"{t} frames > model.max_frames={max_frames}"
    seq = delay(codes, special)  # [B, K, S]
    bos = torch.full_like(seq[:, :, :1], special)
    return torch.cat([bos, seq[:, :, :-1]], dim=2)  # input at column s is the target at column s-1
