"""The spectrogram decoder's learned head: a small MLP that corrects the ridge regression's log-magnitude.

Why (RESULTS.md "Codec version 3"): the ridge regression is linear in the log-mel latent, so it can only spread a
mel band's energy over the linear bins the band covers, and it is fitted by least squares while the codec is judged
by an L1 distance of log-magnitudes. A two-layer MLP that reads each codec frame with two neighbours either side and
adds its output to the ridge's, trained by Adam on that L1 distance, cut the multi-resolution STFT distance of the
small world's codec on 32 held-out clips from 3.09 to 2.79 (real-music small world: 4.37 to 3.56). Its last layer
starts at zero, so before training the decoder is exactly codec version 2's.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def context_features(emb: torch.Tensor, context: int) -> torch.Tensor:
    """``[B, D, T]`` -> ``[B, T, (2·context + 1)·D]``: each frame with its neighbours (edges repeated)."""
    t = emb.shape[-1]
    padded = F.pad(emb, (context, context), mode="replicate") if context else emb
    return torch.cat([padded[:, :, i: i + t] for i in range(2 * context + 1)], dim=1).transpose(1, 2)


class LogMagnitudeHead(torch.nn.Module):
    """Quantised latents ``[B, D, T]`` -> a correction ``[B, T, out_dim]`` of the ridge's log-magnitude."""

    def __init__(self, dimension: int, out_dim: int, hidden: int, context: int):
        super().__init__()
        self.context = context
        in_dim = (2 * context + 1) * dimension
        # The latents' per-feature mean and spread on the fit corpus, so one learning rate suits every feature.
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("scale", torch.ones(in_dim))
        self.net = torch.nn.Sequential(torch.nn.Linear(in_dim, hidden), torch.nn.GELU(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.GELU(),
                                       torch.nn.Linear(hidden, out_dim))
        torch.nn.init.zeros_(self.net[-1].weight)
        torch.nn.init.zeros_(self.net[-1].bias)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.net((context_features(emb, self.context) - self.mean) / self.scale)


def fit_head(decoder, emb: torch.Tensor, wavs: np.ndarray, steps: int, clips_per_step: int = 16,
             lr: float = 2e-3, seed: int = 0) -> list[float]:
    """Train ``decoder.head`` (the ridge already fitted) on quantised latents ``emb [N, D, T]`` of ``wavs
    [N, samples]``: L1 between the decoder's log-magnitude and each clip's own. Returns the loss per step.

    Each step draws ``clips_per_step`` clips (75 frames each at 3 s) and computes their targets there, so the fit
    holds the latents, not the ``N · T · subframes · F`` target spectrogram (1 GB on the small world's fit clips).
    """
    head = decoder.head
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        feats = context_features(emb[: min(len(emb), 512)], head.context).flatten(0, 1)
        head.mean.copy_(feats.mean(0))
        head.scale.copy_(feats.std(0) + 1e-3)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    head.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(emb), (clips_per_step,), generator=g)
        e = emb[idx]
        with torch.no_grad():
            target = decoder.target(torch.as_tensor(wavs[idx.numpy()], dtype=torch.float32), e.shape[-1])
        loss = (decoder.log_magnitude(e) - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    head.eval()
    return losses
