"""The decoder's building blocks: a CPU-friendly linear layer, attention with a sliced KV cache, and the decoder layer
(self-attention, cross-attention to the text, feed-forward).

Shapes: B batch, N positions, D model width, H heads, Dh = D / H.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

if TYPE_CHECKING:
    from divcfg.model.policy_config import PolicyConfig


# Optimizer steps taken in this process. A fused optimizer (torch.optim.Adam(fused=True), the learner's) writes the
# weights in its own kernel without bumping their ``_version``, so the version alone would keep a stale copy in
# Linear's cache; every step of any optimizer bumps this count instead (a process-wide post-step hook).
_optimizer_steps = 0


def _count_optimizer_step(optimizer, args, kwargs) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


register_optimizer_step_post_hook(_count_optimizer_step)


class Linear(nn.Linear):
    """``nn.Linear`` whose CPU inference forward multiplies by a cached contiguous copy of ``Wᵀ``.

    MKL's GEMM for few rows (a decoding step: batch × 1 rows) is 1.3–2.2× faster with the weight in that layout
    than with ``nn.Linear``'s ``[out, in]`` (the output heads at 8 rows: 428 against 944 µs; equal at 256 rows).
    Only for fp32: bf16 GEMM (oneDNN, ``actors.dtype=bf16``) is the other way round, ``F.linear`` 1.16–1.22× faster
    than the transposed copy at 1 and 8 rows over 800 MB of 4096 × 1024 weights on an AMD EPYC (BENCHMARKS.md), so
    other dtypes keep ``F.linear`` and no copy.
    The copy is rebuilt whenever the weight changes (a snapshot load bumps its version, an optimizer step the count
    above), so
    rollout actors rebuild it once per policy version. Training (grad enabled) and other devices use ``F.linear``;
    the state dict is ``nn.Linear``'s. Without a bias (MusicGen's projections) the product is a plain ``mm``.
    """

    _transposed: torch.Tensor | None = None
    _transposed_key: tuple | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.device.type != "cpu" or self.weight.dtype != torch.float32:
            return F.linear(x, self.weight, self.bias)
        w = self.weight
        key = (w.data_ptr(), w._version, w.dtype, _optimizer_steps)
        if self._transposed_key != key:
            self._transposed, self._transposed_key = w.detach().t().contiguous(), key
        rows = x.reshape(-1, x.shape[-1])
        out = torch.mm(rows, self._transposed) if self.bias is None else torch.addmm(self.bias, rows, self._transposed)
        return out.view(*x.shape[:-1], out.shape[-1])


ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}
"""``PolicyConfig.activation`` -> module. MusicGen's ``gelu`` is transformers' exact (erf) GELU, ``nn.GELU()``."""


class Attention(nn.Module):
    """Multi-head attention with an optional preallocated KV cache (self) or precomputed keys (cross)."""

    def __init__(self, dim: int, n_heads: int, dropout: float, cross: bool, bias: bool = True):
        super().__init__()
        self.h, self.dh, self.cross, self.dropout = n_heads, dim // n_heads, cross, dropout
        if cross:
            self.q = Linear(dim, dim, bias=bias)
            self.kv = Linear(dim, 2 * dim, bias=bias)
        else:
            self.qkv = Linear(dim, 3 * dim, bias=bias)
        self.out = Linear(dim, dim, bias=bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, D] -> [B, H, N, Dh]
        return x.view(x.shape[0], x.shape[1], self.h, self.dh).transpose(1, 2)

    def cross_kv(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(states).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def forward(self, x, *, kv=None, attn_mask=None, cache=None, pos: int = 0):
        b, n, d = x.shape
        p = self.dropout if self.training else 0.0
        if self.cross:
            q = self._heads(self.q(x))
            k, v = kv
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        else:
            q, k, v = (self._heads(t) for t in self.qkv(x).chunk(3, dim=-1))
            if isinstance(pos, torch.Tensor):
                # The static-shape step of model/decode_graph.py (pos is a [1] device tensor): write at pos and
                # attend to the whole cache with the later keys masked, so no shape depends on pos.
                cache[0].index_copy_(2, pos, k.to(cache[0].dtype))  # autocast: bf16 k into the cache's dtype
                cache[1].index_copy_(2, pos, v.to(cache[1].dtype))
                seen = (torch.arange(cache[0].shape[2], device=pos.device) <= pos)[None, :]  # [1, S]: every query row
                y = F.scaled_dot_product_attention(q, cache[0], cache[1], attn_mask=seen)
                return self.out(y.transpose(1, 2).reshape(b, n, d))
            if cache is not None:
                cache[0][:, :, pos: pos + n] = k
                cache[1][:, :, pos: pos + n] = v
                k, v = cache[0][:, :, : pos + n], cache[1][:, :, : pos + n]
            # A single new query may see every cached key; a chunk at pos 0 is causal as usual.
            causal = n > 1
            if causal and pos > 0:
                raise NotImplementedError("multi-token decode after a non-empty cache is not needed here")
            y = F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=p)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        self.self_attn = Attention(cfg.dim, cfg.n_heads, cfg.dropout, cross=False, bias=cfg.bias)
        self.cross_attn = Attention(cfg.dim, cfg.n_heads, cfg.dropout, cross=True, bias=cfg.bias)
        width = cfg.ffn_width
        self.ffn = nn.Sequential(Linear(cfg.dim, width, bias=cfg.bias), ACTIVATIONS[cfg.activation](),
                                 Linear(width, cfg.dim, bias=cfg.bias), nn.Dropout(cfg.dropout))

    def forward(self, x, cross_kv, cross_mask, cache=None, pos=0, null_cross=None):
        x = x + self.self_attn(self.norm1(x), cache=cache, pos=pos)
        if null_cross is None:
            x = x + self.cross_attn(self.norm2(x), kv=cross_kv, attn_mask=cross_mask)
        else:
            # CFG decoding: the rows after the cond rows carry the null condition, whose only key is the learned null
            # state, so their cross-attention output is this layer's constant ``null_cross [1, 1, D]``.
            b = cross_kv[0].shape[0]
            cond = x[:b] + self.cross_attn(self.norm2(x[:b]), kv=cross_kv, attn_mask=cross_mask)
            x = torch.cat([cond, x[b:] + null_cross])
        return x + self.ffn(self.norm3(x))
