"""The audio-token policy: a MusicGen-style decoder over EnCodec RVQ codes, conditioned on text.

Shapes used throughout: B batch, K codebooks, T audio frames, S = T + K - 1 delayed columns, V codes per codebook
(``card``), D model width, H heads, L text length.

The same network gives the conditional distribution (prompt) and the unconditional one (a learned null condition,
trained by condition dropout), which is what classifier-free guidance mixes.
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from divcfg.common.cfg import cfg_mix, sample_tokens
from divcfg.common.delay import delay, delay_valid_mask, delayed_length, undelay


@dataclass
class PolicyConfig:
    """Architecture of the policy. Presets in :data:`PRESETS` fill the size fields; the codec fixes K and V."""

    preset: str = "tiny"
    """Name of the size preset this config came from (informational once resolved)."""
    n_codebooks: int = 4
    """K: RVQ codebooks per frame, from the codec."""
    card: int = 256
    """V: codes per codebook, from the codec. Index V is the special (BOS / delay padding) token."""
    dim: int = 64
    """D: model width."""
    n_layers: int = 2
    """Decoder layers (self-attention, cross-attention to the text, feed-forward)."""
    n_heads: int = 2
    """Attention heads; must divide ``dim``."""
    ffn_mult: int = 4
    """Feed-forward width as a multiple of ``dim``."""
    max_frames: int = 256
    """Longest audio (in frames) the learned positions cover."""
    text_max_len: int = 96
    """Longest prompt, in UTF-8 bytes, that the text encoder takes."""
    text_layers: int = 1
    """Transformer layers in the byte-level text encoder."""
    cond_pool: bool = True
    """Also add a projection of the mean text state to every decoder input. Cross-attention must learn where to look
    before the prompt can inform a code; the pooled path informs every position from the first step."""
    text_word_buckets: int = 4096
    """Hash buckets for whole-word features added to every byte of a word (0: bytes only). Words let a small encoder
    see "fast" as one symbol instead of composing it from bytes; hashing keeps any text usable, with no vocabulary."""
    freeze_text: bool = False
    """Keep the text encoder fixed during training (as MusicGen keeps its T5): set for a text encoder trained
    beforehand (``learner/pretrain.py: pretrain_text``). Trained jointly from scratch, the decoder's gradient reaches
    it as mostly noise: the prompt is worth a few nats of a clip's hundreds."""
    dropout: float = 0.0
    """Dropout in attention and feed-forward blocks (training only)."""

    def validate(self) -> None:
        for name in ("n_codebooks", "card", "dim", "n_layers", "n_heads", "ffn_mult", "max_frames", "text_max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.text_word_buckets < 0:
            raise ValueError(f"model.text_word_buckets must be >= 0, got {self.text_word_buckets}")
        if self.dim % self.n_heads:
            raise ValueError(f"model.dim={self.dim} is not divisible by model.n_heads={self.n_heads}")


# Sizes from a millisecond test model to a GPU-scale one (``base`` is about MusicGen-small's decoder).
PRESETS: dict[str, dict] = {
    "tiny": dict(dim=64, n_layers=2, n_heads=2, text_layers=1),
    "small": dict(dim=256, n_layers=4, n_heads=4, text_layers=2),
    "medium": dict(dim=512, n_layers=8, n_heads=8, text_layers=2),
    "base": dict(dim=1024, n_layers=24, n_heads=16, text_layers=4),
}


def policy_config(preset: str = "tiny", **overrides) -> PolicyConfig:
    """A :class:`PolicyConfig` from a preset name plus field overrides; an unknown preset is an error that lists the known ones."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; known presets: {', '.join(PRESETS)}")
    fields = {**PRESETS[preset], **overrides, "preset": preset}
    unknown = set(fields) - set(PolicyConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown model config field(s) {sorted(unknown)}")
    cfg = PolicyConfig(**fields)
    cfg.validate()
    return cfg


class Condition(NamedTuple):
    """Encoded text condition: ``states [B, L, D]`` and ``mask [B, L]`` (True = a real position)."""

    states: torch.Tensor
    mask: torch.Tensor


class PromptTooLongError(ValueError):
    pass


_WORD = re.compile(rb"[A-Za-z0-9'-]+")


def tokenize_prompts(prompts: list[str], max_len: int, truncate: bool = False,
                     word_buckets: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """UTF-8 bytes of each prompt, padded: ``(ids [B, L], words [B, L], mask [B, L] bool)``. Byte 256 is padding.

    ``words`` gives every byte of a word (letters, digits, ``'`` and ``-``, lower-cased) the word's hash bucket in
    ``1 .. word_buckets``; other bytes, padding, and everything when ``word_buckets`` is 0 get 0.
    """
    encoded = [p.encode("utf-8") for p in prompts]
    for i, b in enumerate(encoded):
        if len(b) > max_len and not truncate:
            raise PromptTooLongError(
                f"prompt {i} is {len(b)} UTF-8 bytes, over the text encoder's limit of {max_len} "
                f"(model.text_max_len); shorten it or allow truncation: {prompts[i][:60]!r}...")
    encoded = [b[:max_len] for b in encoded]
    length = max(1, max(len(b) for b in encoded))
    ids = torch.full((len(encoded), length), 256, dtype=torch.long)
    words = torch.zeros((len(encoded), length), dtype=torch.long)
    for i, b in enumerate(encoded):
        if b:
            ids[i, : len(b)] = torch.tensor(list(b), dtype=torch.long)
        if word_buckets:
            for m in _WORD.finditer(b):
                # crc32, not hash(): Python salts str hashes per process, and buckets must survive a checkpoint.
                words[i, m.start(): m.end()] = 1 + zlib.crc32(m.group().lower()) % word_buckets
    return ids, words, ids != 256


class TextEncoder(nn.Module):
    """A small byte-level transformer encoder: no vocabulary file, no download."""

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.emb = nn.Embedding(257, cfg.dim)
        self.word_emb = nn.Embedding(cfg.text_word_buckets + 1, cfg.dim) if cfg.text_word_buckets else None
        self.pos = nn.Parameter(torch.randn(cfg.text_max_len, cfg.dim) * 0.02)
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.n_heads, cfg.ffn_mult * cfg.dim, cfg.dropout,
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, ids: torch.Tensor, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids) + self.pos[: ids.shape[1]]
        if self.word_emb is not None:
            x = x + self.word_emb(words)
        x = self.layers(x, src_key_padding_mask=~mask)
        return self.norm(x)


class Linear(nn.Linear):
    """``nn.Linear`` whose CPU inference forward multiplies by a cached contiguous copy of ``Wᵀ``.

    MKL's GEMM for few rows (a decoding step: batch × 1 rows) is 1.3–2.2× faster with the weight in that layout
    than with ``nn.Linear``'s ``[out, in]`` (the output heads at 8 rows: 428 against 944 µs; equal at 256 rows).
    The copy is rebuilt whenever the weight changes (an optimizer step or a snapshot load bumps its version), so
    rollout actors rebuild it once per policy version. Training (grad enabled) and other devices use ``F.linear``;
    the state dict is ``nn.Linear``'s.
    """

    _transposed: torch.Tensor | None = None
    _transposed_key: tuple | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.device.type != "cpu" or self.bias is None:
            return F.linear(x, self.weight, self.bias)
        w = self.weight
        key = (w.data_ptr(), w._version, w.dtype)
        if self._transposed_key != key:
            self._transposed, self._transposed_key = w.detach().t().contiguous(), key
        out = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self._transposed)
        return out.view(*x.shape[:-1], out.shape[-1])


class Attention(nn.Module):
    """Multi-head attention with an optional preallocated KV cache (self) or precomputed keys (cross)."""

    def __init__(self, dim: int, n_heads: int, dropout: float, cross: bool):
        super().__init__()
        self.h, self.dh, self.cross, self.dropout = n_heads, dim // n_heads, cross, dropout
        if cross:
            self.q = Linear(dim, dim)
            self.kv = Linear(dim, 2 * dim)
        else:
            self.qkv = Linear(dim, 3 * dim)
        self.out = Linear(dim, dim)

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
                # The static-shape step of common/decode_graph.py (pos is a [1] device tensor): write at pos and
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
        self.self_attn = Attention(cfg.dim, cfg.n_heads, cfg.dropout, cross=False)
        self.cross_attn = Attention(cfg.dim, cfg.n_heads, cfg.dropout, cross=True)
        self.ffn = nn.Sequential(Linear(cfg.dim, cfg.ffn_mult * cfg.dim), nn.GELU(),
                                 Linear(cfg.ffn_mult * cfg.dim, cfg.dim), nn.Dropout(cfg.dropout))

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


class GenerationOutput(NamedTuple):
    """``codes [B, K, T]`` long, ``logprobs [B, K, T]`` float32 under the sampling distribution, and optionally the
    guided per-column logits ``[B, K, S, V]`` (for tests)."""

    codes: torch.Tensor
    logprobs: torch.Tensor
    step_logits: torch.Tensor | None = None


class CachedSampler:
    """``generate`` for every policy: argument checks, inference mode, and outputs usable by autograd afterwards.

    A policy supplies ``_generate`` (one delayed column per step with its own KV cache) and ``cfg.max_frames``.
    """

    def generate(self, cond: Condition, n_frames: int, *, guidance_scale: float = 1.0, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None,
                 return_logits: bool = False) -> GenerationOutput:
        """Sample ``n_frames`` frames for each condition row, one delayed column per step, with a KV cache.

        With ``guidance_scale != 1`` the cond and null rows run as one forward of size 2B and are mixed by
        :func:`cfg_mix`. Returns ``codes [B, K, T]``, ``logprobs [B, K, T]`` under the distribution each code was
        drawn from, and optionally the guided per-column logits ``[B, K, S, V]``.
        """
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
        if not 1 <= n_frames <= self.cfg.max_frames:
            raise ValueError(f"n_frames must be in [1, {self.cfg.max_frames}], got {n_frames}")
        with torch.inference_mode():
            out = self._generate(cond, n_frames, guidance_scale, temperature, top_k, top_p, generator, return_logits)
        # Outputs leave inference mode so that callers may use them in autograd (the learner re-scores them).
        return GenerationOutput(*(t.clone() if t is not None else None for t in out))


class AudioTokenPolicy(CachedSampler, nn.Module):
    """Decoder-only transformer over delayed RVQ codes, with byte-level text conditioning by cross-attention.

    Interface shared by every policy the roles may hold (see also the MusicGen adapter):
    ``encode_condition``, ``null_condition``, ``logits``, ``guided_logits``, ``generate``.
    """

    cuda_graphs: bool = True
    """Decode with CUDA graphs on a GPU (common/decode_graph.py); False for the eager step everywhere."""

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        k, v, d = cfg.n_codebooks, cfg.card, cfg.dim
        self.special = v
        # One embedding table per codebook (V codes + the special token), stored stacked and summed over codebooks.
        self.code_emb = nn.Embedding(k * (v + 1), d)
        self.register_buffer("code_offsets", torch.arange(k).view(1, k, 1) * (v + 1), persistent=False)
        self.pos = nn.Parameter(torch.randn(delayed_length(cfg.max_frames, k), d) * 0.02)
        self.text = TextEncoder(cfg).requires_grad_(not cfg.freeze_text)
        # The learned null condition: the unconditional branch of CFG.
        self.null_cond = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.cond_pool = nn.Linear(d, d) if cfg.cond_pool else None
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(d)
        # One output head per codebook, stacked into one matmul: rows [k*V:(k+1)*V] are codebook k's head.
        self.heads = Linear(d, k * v)
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
        return self.null_cond.device

    # ---- conditioning -------------------------------------------------------------------------------------------
    def encode_condition(self, prompts: list[str], truncate: bool = False) -> Condition:
        """Text prompts -> :class:`Condition` ``([B, L, D], [B, L])``."""
        ids, words, mask = tokenize_prompts(prompts, self.cfg.text_max_len, truncate, self.cfg.text_word_buckets)
        ids, words, mask = ids.to(self.device), words.to(self.device), mask.to(self.device)
        return Condition(self.text(ids, words, mask), mask)

    def null_condition(self, batch: int, length: int = 1) -> Condition:
        """The unconditional condition for ``batch`` rows, padded to ``length`` positions (only the first is real)."""
        states = torch.zeros(batch, length, self.cfg.dim, device=self.device, dtype=self.null_cond.dtype)
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
        return kv, cond.mask[:, None, None, :]

    def _cross_rows(self, cond: Condition, guidance_scale: float):
        """Cross-attention inputs for the decoder layers: ``(keys/values per layer, mask, null_cross per layer)``.

        With ``guidance_scale != 1`` the rows are cond then :meth:`with_null`'s null rows. A null row's only real key
        is the learned null state, so its cross-attention output is that key's value through the output projection
        whatever the query: one constant ``[1, 1, D]`` per layer (``null_cross``), and only the cond rows attend.
        """
        if guidance_scale == 1.0:
            return (*self._cross(cond), [None] * len(self.layers))
        half = cond.states.shape[0] // 2
        null_cross = []
        for layer in self.layers:
            _, v = layer.cross_attn.kv(self.null_cond).chunk(2, dim=-1)
            null_cross.append(layer.cross_attn.out(v))
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
        b, k, t = codes.shape
        assert k == self.cfg.n_codebooks, f"codes have {k} codebooks, model has {self.cfg.n_codebooks}"
        assert t <= self.cfg.max_frames, f"{t} frames > model.max_frames={self.cfg.max_frames}"
        assert cond.states.shape[0] == b, f"condition batch {cond.states.shape[0]} != codes batch {b}"
        seq = delay(codes, self.special)  # [B, K, S]
        bos = torch.full_like(seq[:, :, :1], self.special)
        columns = torch.cat([bos, seq[:, :, :-1]], dim=2)  # input at column s is the target at column s-1
        return undelay(self.forward_delayed(columns, cond, guidance_scale), t)

    def guided_logits(self, codes: torch.Tensor, cond: Condition, guidance_scale: float) -> torch.Tensor:
        """CFG logits ``[B, K, T, V]``: cond and uncond in one batched forward of size 2B, mixed per token (before
        the output heads, which equals mixing their logits: :meth:`_heads`)."""
        if guidance_scale == 1.0:
            return self.logits(codes, cond)
        return self.logits(torch.cat([codes, codes]), self.with_null(cond), guidance_scale)

    # ---- KV-cached sampling: generate() comes from CachedSampler --------------------------------------------------
    def _generate(self, cond, n_frames, guidance_scale, temperature, top_k, top_p, generator, return_logits):
        k, v = self.cfg.n_codebooks, self.cfg.card
        b = cond.states.shape[0]
        use_cfg = guidance_scale != 1.0
        if use_cfg:
            cond = self.with_null(cond)
        rows = cond.states.shape[0]
        s_len = delayed_length(n_frames, k)
        valid = delay_valid_mask(k, n_frames, self.device)  # [K, S]
        step = self._decode_step(cond, rows, s_len, guidance_scale)
        seq = torch.full((b, k, s_len), self.special, dtype=torch.long, device=self.device)
        seq_logprobs = torch.zeros(b, k, s_len, dtype=torch.float32, device=self.device)
        step_logits = torch.empty(b, k, s_len, v, device=self.device) if return_logits else None
        column = torch.full((rows, k, 1), self.special, dtype=torch.long, device=self.device)
        for s in range(s_len):
            logits = step(column, s)  # [B, K, V], guided when use_cfg
            if return_logits:
                step_logits[:, :, s] = logits
            tokens, logprobs = sample_tokens(logits, temperature, top_k, top_p, generator)
            tokens = torch.where(valid[:, s], tokens, self.special)  # delay padding is forced, never sampled
            seq[:, :, s] = tokens
            seq_logprobs[:, :, s] = torch.where(valid[:, s], logprobs, 0.0)
            column = (torch.cat([tokens, tokens]) if use_cfg else tokens)[:, :, None]
        return GenerationOutput(undelay(seq, n_frames), undelay(seq_logprobs, n_frames), step_logits)

    def _decode_step(self, cond: Condition, rows: int, s_len: int, guidance_scale: float):
        """``step(column [rows, K, 1], s) -> logits [B, K, V]`` for one ``generate`` call: a CUDA graph on the GPU
        (common/decode_graph.py), else the eager step over a KV cache sliced to the position."""
        if self.device.type == "cuda" and self.cuda_graphs:
            from divcfg.common.decode_graph import decode_graph
            graph = decode_graph(self, rows, s_len, guidance_scale)
            graph.load(cond)
            return graph.step
        pooled = self._pooled(cond)
        kv, cross_mask, null_cross = self._cross_rows(cond, guidance_scale)
        dh, dtype = self.cfg.dim // self.cfg.n_heads, self.null_cond.dtype
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


def build_policy(cfg: PolicyConfig | None = None, seed: int | None = None, **overrides) -> AudioTokenPolicy:
    """The tiny model factory: ``build_policy()`` is a real model that runs on CPU in milliseconds."""
    if cfg is None:
        cfg = policy_config(overrides.pop("preset", "tiny"), **overrides)
    if seed is not None:
        torch.manual_seed(seed)
    return AudioTokenPolicy(cfg)
