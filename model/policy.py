"""The audio-token policy: a MusicGen-style decoder over EnCodec RVQ codes, conditioned on text.

Shapes used throughout: B batch, K codebooks, T audio frames, S = T + K - 1 delayed columns, V codes per codebook
(``card``), D model width, H heads, L text length.

The same network gives the conditional distribution (prompt) and the unconditional one (a learned null condition,
trained by condition dropout), which is what classifier-free guidance mixes.

The architecture variants of :class:`PolicyConfig` (sinusoidal positions, no biases, an external text encoder, the
all-zero null condition) make the same code run MusicGen's decoder: ``model/musicgen/convert.py`` maps its weights in.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from divcfg.model.decode_graph import decode_graph
from divcfg.model.delay import delayed_length, teacher_forced_columns, undelay
from divcfg.model.guidance import cfg_mix
from divcfg.model.layers import DecoderLayer, Linear
from divcfg.model.policy_config import PolicyConfig, policy_config
from divcfg.model.sampling import CachedSampler
from divcfg.model.text_condition import Condition, TextEncoder, tokenize_prompts


class AudioTokenPolicy(CachedSampler, nn.Module):
    """Decoder-only transformer over delayed RVQ codes, with byte-level text conditioning by cross-attention.

    Interface shared by every policy the roles may hold (see also the MusicGen adapter):
    ``encode_condition``, ``null_condition``, ``logits``, ``guided_logits``, ``generate``.
    """

    cuda_graphs: bool = True
    """Decode with CUDA graphs on a GPU (model/decode_graph.py); False for the eager step everywhere."""

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        k, v, d = cfg.n_codebooks, cfg.card, cfg.dim
        self.special = v
        # One embedding table per codebook (V codes + the special token), stored stacked and summed over codebooks.
        self.code_emb = nn.Embedding(k * (v + 1), d)
        self.register_buffer("code_offsets", torch.arange(k).view(1, k, 1) * (v + 1), persistent=False)
        if cfg.positions == "learned":
            self.pos = nn.Parameter(torch.randn(delayed_length(cfg.max_frames, k), d) * 0.02)
        else:
            self.register_buffer("pos", sinusoidal_positions(delayed_length(cfg.max_frames, k), d), persistent=False)
        # None with text_encoder=external: encode_condition is then the owner's (MusicGen's T5).
        self.text = TextEncoder(cfg).requires_grad_(not cfg.freeze_text) if cfg.text_encoder == "bytes" else None
        # The learned null condition: the unconditional branch of CFG (None with null_condition=zeros).
        self.null_cond = nn.Parameter(torch.randn(1, 1, d) * 0.02) if cfg.null_condition == "learned" else None
        self.cond_pool = nn.Linear(d, d) if cfg.cond_pool else None
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(d)
        # One output head per codebook, stacked into one matmul: rows [k*V:(k+1)*V] are codebook k's head.
        self.heads = Linear(d, k * v, bias=cfg.head_bias)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    @property
    def device(self) -> torch.device:
        return self.code_emb.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.code_emb.weight.dtype

    # ---- conditioning -------------------------------------------------------------------------------------------
    def encode_condition(self, prompts: list[str], truncate: bool = False) -> Condition:
        """Text prompts -> :class:`Condition` ``([B, L, D], [B, L])``."""
        if self.text is None:
            raise ValueError("model.text_encoder=external: the condition comes from the policy's owner "
                             "(MusicGenPolicy.encode_condition)")
        ids, words, mask = tokenize_prompts(prompts, self.cfg.text_max_len, truncate, self.cfg.text_word_buckets)
        ids, words, mask = ids.to(self.device), words.to(self.device), mask.to(self.device)
        return Condition(self.text(ids, words, mask), mask)

    def null_condition(self, batch: int, length: int = 1) -> Condition:
        """The unconditional condition for ``batch`` rows, padded to ``length`` positions (only the first is real;
        none with ``null_condition=zeros``: all-zero states, all-False mask, as MusicGen builds it)."""
        states = torch.zeros(batch, length, self.cfg.dim, device=self.device, dtype=self.dtype)
        if self.null_cond is None:
            return Condition(states, torch.zeros(batch, length, dtype=torch.bool, device=self.device))
        states = torch.cat([self.null_cond.expand(batch, 1, -1), states[:, 1:]], dim=1)
        mask = torch.zeros(batch, length, dtype=torch.bool, device=self.device)
        mask[:, 0] = True
        return Condition(states, mask)

    def drop_condition(self, cond: Condition, drop: torch.Tensor) -> Condition:
        """Condition dropout: rows where ``drop [B]`` is True get the null condition (trains the uncond branch)."""
        null = self.null_condition(cond.states.shape[0], cond.states.shape[1])
        states = torch.where(drop[:, None, None], null.states, cond.states)
        mask = torch.where(drop[:, None], null.mask, cond.mask)
        return Condition(states, mask)

    def with_null(self, cond: Condition) -> Condition:
        """``[cond; null]`` along the batch: the 2B condition of one batched CFG forward."""
        null = self.null_condition(cond.states.shape[0], cond.states.shape[1])
        return Condition(torch.cat([cond.states, null.states]), torch.cat([cond.mask, null.mask]))

    # ---- whole-sequence scoring ---------------------------------------------------------------------------------
    def _embed(self, columns: torch.Tensor, pos: int | torch.Tensor) -> torch.Tensor:
        """``columns [B, K, N]`` (codes or special) -> ``[B, N, D]``: codebook embeddings summed, plus positions
        (``pos`` a ``[1]`` tensor: one column at a device-side position)."""
        x = self.code_emb(columns + self.code_offsets).sum(1)
        if isinstance(pos, torch.Tensor):
            return x + self.pos.index_select(0, pos)
        return x + self.pos[pos: pos + columns.shape[2]]

    def _cross(self, cond: Condition):
        kv = [layer.cross_attn.cross_kv(cond.states) for layer in self.layers]
        mask = cond.mask
        if self.null_cond is None:
            # A row with no real position (MusicGen's null condition) would softmax over nothing: NaN. Its states
            # are zeros and the projections have no bias, so attending to all of them gives exactly 0, as
            # transformers' additive mask does.
            mask = mask | ~mask.any(-1, keepdim=True)
        return kv, mask[:, None, None, :]

    def _cross_rows(self, cond: Condition, guidance_scale: float):
        """Cross-attention inputs for the decoder layers: ``(keys/values per layer, mask, null_cross per layer)``.

        With ``guidance_scale != 1`` the rows are cond then :meth:`with_null`'s null rows. A null row's only real key
        is the learned null state, so its cross-attention output is that key's value through the output projection
        whatever the query: one constant ``[1, 1, D]`` per layer (``null_cross``), and only the cond rows attend.
        """
        if guidance_scale == 1.0:
            return (*self._cross(cond), [None] * len(self.layers))
        half = cond.states.shape[0] // 2
        if self.null_cond is None:  # zero states, no biases: the null rows' cross-attention adds exactly 0
            null_cross = [torch.zeros(1, 1, self.cfg.dim, device=self.device, dtype=self.dtype)] * len(self.layers)
        else:
            null_cross = [layer.cross_attn.out(layer.cross_attn.kv(self.null_cond).chunk(2, dim=-1)[1])
                          for layer in self.layers]
        return (*self._cross(Condition(cond.states[:half], cond.mask[:half])), null_cross)

    def _pooled(self, cond: Condition) -> torch.Tensor | float:
        """``[B, 1, D]`` added to every decoder input (0 without ``cond_pool``): the masked mean text state."""
        if self.cond_pool is None:
            return 0.0
        m = cond.mask[..., None].to(cond.states.dtype)
        return self.cond_pool((cond.states * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1))

    def _heads(self, h: torch.Tensor, guidance_scale: float = 1.0) -> torch.Tensor:
        """``[B, N, D]`` -> logits ``[B, K, N, V]``. With ``guidance_scale != 1`` the rows are cond then null and the
        result is the guided logits of the first half: the heads are affine with one bias, so mixing the normed
        states before them equals :func:`cfg_mix` on their logits (to rounding) and runs the largest matmul of a
        decoding step on half the rows."""
        h = self.norm(h)
        if guidance_scale != 1.0:
            half = h.shape[0] // 2
            h = cfg_mix(h[:half], h[half:], guidance_scale)
        b, n, _ = h.shape
        return self.heads(h).view(b, n, self.cfg.n_codebooks, self.cfg.card).transpose(1, 2)

    def forward_delayed(self, columns: torch.Tensor, cond: Condition, guidance_scale: float = 1.0) -> torch.Tensor:
        """Teacher-forced forward on delayed input columns ``[B, K, S]`` -> per-column logits ``[B, K, S, V]``
        (guided logits of the first half of the rows when ``guidance_scale != 1``: see :meth:`_heads`)."""
        x = self._embed(columns, 0) + self._pooled(cond)
        kv, mask, null_cross = self._cross_rows(cond, guidance_scale)
        for layer, lkv, nc in zip(self.layers, kv, null_cross):
            x = layer(x, lkv, mask, null_cross=nc)
        return self._heads(x, guidance_scale)

    def logits(self, codes: torch.Tensor, cond: Condition, guidance_scale: float = 1.0) -> torch.Tensor:
        """Logits of every code given the codes before it: ``codes [B, K, T]`` -> ``[B, K, T, V]``.

        ``out[b, k, t]`` is the distribution that predicts ``codes[b, k, t]`` (aligned with the targets). With
        ``guidance_scale != 1`` the rows are cond then null and the output is the first half's guided logits.
        """
        assert cond.states.shape[0] == codes.shape[0], f"condition batch {cond.states.shape[0]} != codes batch"
        columns = teacher_forced_columns(codes, self.special, self.cfg.n_codebooks, self.cfg.max_frames)
        return undelay(self.forward_delayed(columns, cond, guidance_scale), codes.shape[2])

    def guided_logits(self, codes: torch.Tensor, cond: Condition, guidance_scale: float) -> torch.Tensor:
        """CFG logits ``[B, K, T, V]``: cond and uncond in one batched forward of size 2B, mixed per token (before
        the output heads, which equals mixing their logits: :meth:`_heads`)."""
        if guidance_scale == 1.0:
            return self.logits(codes, cond)
        return self.logits(torch.cat([codes, codes]), self.with_null(cond), guidance_scale)

    # ---- KV-cached sampling: generate() and its loop come from CachedSampler (model/sampling.py) -------------
    def _decode_step(self, cond: Condition, rows: int, s_len: int, guidance_scale: float):
        """``step(column [rows, K, 1], s) -> logits [B, K, V]`` for one ``generate`` call: a CUDA graph on the GPU
        (model/decode_graph.py), else the eager step over a KV cache sliced to the position."""
        if self.device.type == "cuda" and self.cuda_graphs:
            graph = decode_graph(self, rows, s_len, guidance_scale)
            graph.load(cond)
            return graph.step
        pooled = self._pooled(cond)
        kv, cross_mask, null_cross = self._cross_rows(cond, guidance_scale)
        dh, dtype = self.cfg.dim // self.cfg.n_heads, self.dtype
        caches = [(torch.empty(rows, self.cfg.n_heads, s_len, dh, device=self.device, dtype=dtype),
                   torch.empty(rows, self.cfg.n_heads, s_len, dh, device=self.device, dtype=dtype))
                  for _ in self.layers]

        def step(column: torch.Tensor, s: int) -> torch.Tensor:
            x = self._embed(column, s) + pooled
            for layer, lkv, cache, nc in zip(self.layers, kv, caches, null_cross):
                x = layer(x, lkv, cross_mask, cache=cache, pos=s, null_cross=nc)
            return self._heads(x, guidance_scale)[:, :, 0]
        return step

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def sinusoidal_positions(n: int, dim: int) -> torch.Tensor:
    """``[n, dim]`` MusicGen's fixed positions (tensor2tensor's layout: cos of every frequency, then sin), computed
    with the same operations as transformers' ``MusicgenSinusoidalPositionalEmbedding``, so equal to its table."""
    half = dim // 2
    step = math.log(10000) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.int64).float() * -step)
    angles = torch.arange(n, dtype=torch.int64).float().unsqueeze(1) * freqs.unsqueeze(0)
    table = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).view(n, -1)
    if dim % 2:
        table = torch.cat([table, torch.zeros(n, 1)], dim=1)
    return table.to(torch.get_default_dtype())


def build_policy(cfg: PolicyConfig | None = None, seed: int | None = None, **overrides) -> AudioTokenPolicy:
    """The tiny model factory: ``build_policy()`` is a real model that runs on CPU in milliseconds."""
    if cfg is None:
        cfg = policy_config(overrides.pop("preset", "tiny"), **overrides)
    if seed is not None:
        torch.manual_seed(seed)
    return AudioTokenPolicy(cfg)
