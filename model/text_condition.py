"""Text conditioning of the in-repo policy: prompts as UTF-8 bytes (plus word hashes), a small byte-level encoder,
and the :class:`Condition` record every policy family encodes prompts into.

Shapes: B batch, L text length (bytes), D model width.
"""
from __future__ import annotations

import re
import zlib
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from divcfg.model.policy_config import PolicyConfig


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
