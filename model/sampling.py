"""KV-cached sampling over the delay pattern, shared by every policy family.

A policy supplies one decoding step (:meth:`CachedSampler._decode_step`: the next column's guided logits given the
column just sampled, over its own KV cache); the loop here draws the codes, forces the delay padding, records the
log-probs and un-delays. Shapes: B batch, K codebooks, T frames, S = T + K - 1 delayed columns, V codes per codebook.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from divcfg.model.delay import delay_valid_mask, delayed_length, undelay
from divcfg.model.guidance import sample_tokens

Step = Callable[[torch.Tensor, int], torch.Tensor]
"""``step(column [rows, K, 1] long, s) -> logits [B, K, V]``: the guided logits of delayed column ``s`` (rows is 2B
under CFG: the cond rows, then the null rows)."""


class GenerationOutput(NamedTuple):
    """``codes [B, K, T]`` long, ``logprobs [B, K, T]`` float32 under the sampling distribution, and optionally the
    guided per-column logits ``[B, K, S, V]`` (for tests)."""

    codes: torch.Tensor
    logprobs: torch.Tensor
    step_logits: torch.Tensor | None = None


class CachedSampler:
    """``generate`` for every policy: argument checks, inference mode, the sampling loop, and outputs usable by
    autograd afterwards.

    A policy supplies ``_decode_step`` (a :data:`Step` for one call, with its own KV cache), ``with_null``,
    ``special`` (the delay padding token), ``device`` and ``cfg.max_frames``, ``cfg.n_codebooks``, ``cfg.card``.
    """

    def generate(self, cond, n_frames: int, *, guidance_scale: float = 1.0, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None,
                 return_logits: bool = False) -> GenerationOutput:
        """Sample ``n_frames`` frames for each condition row, one delayed column per step, with a KV cache.

        With ``guidance_scale != 1`` the cond and null rows run as one forward of size 2B and are mixed by
        :func:`divcfg.model.guidance.cfg_mix`. Returns ``codes [B, K, T]``, ``logprobs [B, K, T]`` under the
        distribution each code was drawn from, and optionally the guided per-column logits ``[B, K, S, V]``.
        """
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
        if not 1 <= n_frames <= self.cfg.max_frames:
            raise ValueError(f"n_frames must be in [1, {self.cfg.max_frames}], got {n_frames}")
        with torch.inference_mode():
            out = self._generate(cond, n_frames, guidance_scale, temperature, top_k, top_p, generator, return_logits)
        # Outputs leave inference mode so that callers may use them in autograd (the learner re-scores them).
        return GenerationOutput(*(t.clone() if t is not None else None for t in out))

    def _decode_step(self, cond, rows: int, s_len: int, guidance_scale: float) -> Step:
        raise NotImplementedError

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
