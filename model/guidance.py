"""Classifier-free guidance and token sampling, as pure functions over logits."""
from __future__ import annotations

import numpy as np
import torch


def cfg_mix(cond_logits: torch.Tensor, uncond_logits: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Guided logits ``uncond + γ · (cond − uncond)``, on raw logits, any shape (per token and codebook).

    γ = 1 returns ``cond_logits`` itself, so guidance at 1 is exactly the conditional model (no rounding).
    """
    if guidance_scale < 0:
        raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
    if guidance_scale == 1.0:
        return cond_logits
    # lerp extrapolates for γ > 1: one fused pass and one output, against two full-size temporaries for the
    # written-out formula (2.7× faster on the learner's [N, K, T, V] teacher logits on CPU).
    return torch.lerp(uncond_logits, cond_logits, guidance_scale)


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus) filtering over the last dim; filtered entries become -inf."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 disables it), got {top_k}")
    if temperature != 1.0:
        logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the mass strictly before it already reaches top_p; the first token always stays.
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_from_logits(logits: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row of ``logits [..., V]`` (already filtered).

    Returns ``(tokens [...] long, logprobs [...] float32)``: the log-probability of each token under the distribution
    it was actually drawn from, which is what importance weights need.
    """
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    flat = logprobs.reshape(-1, logprobs.shape[-1])
    tokens = torch.multinomial(flat.exp(), 1, generator=generator).squeeze(-1)
    token_logprobs = flat.gather(-1, tokens[:, None]).squeeze(-1)
    shape = logits.shape[:-1]
    return tokens.view(shape), token_logprobs.view(shape)


def top_k_indices(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of each row's ``k`` largest entries of ``flat [rows, V]``, in no particular order (ties broken
    arbitrarily, as ``torch.topk`` does).

    On CPU NumPy's introselect (``argpartition``) is about 5× faster than ``torch.topk`` (98 against 502 µs at
    32 × 2048, k = 250: a tenth of the small model's CFG decoding step); elsewhere ``torch.topk``.
    """
    if flat.device.type == "cpu" and flat.dtype == torch.float32:
        idx = np.argpartition(flat.detach().numpy(), -k, axis=-1)[:, -k:]
        return torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64))
    return torch.topk(flat, k, dim=-1, sorted=False).indices


def sample_tokens(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampler's fast path: same distribution and log-probs as ``filter_logits`` + ``sample_from_logits``.

    Top-k keeps only the k candidates (unsorted) and every row draws one uniform and inverts its CDF, instead of
    masking the full vocabulary and drawing V exponentials in ``torch.multinomial``: on CPU that was 70% of a tiny
    model's step. Top-p needs a sort, so it takes the reference path. ``logits [..., V]`` -> ``(tokens, logprobs)``.
    """
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_p < 1.0:
        return sample_from_logits(filter_logits(logits, temperature, top_k, top_p), generator)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 disables it), got {top_k}")
    shape = logits.shape[:-1]
    flat = logits.reshape(-1, logits.shape[-1]).float()  # may be the caller's tensor: only read below
    index = None
    if 0 < top_k < flat.shape[-1]:
        index = top_k_indices(flat, top_k)
        flat = flat.gather(-1, index)
    # An unnormalised CDF built in one buffer: (x - max) / T, exponentiated and summed in place. The log-prob of the
    # drawn entry is (x - max) / T - log(total). log_softmax + exp + cumsum would make three [rows, V] temporaries
    # and more passes over them; measured 4.4× faster at 512 × 2048 on CPU (about 1% slower per group at 16 rows).
    top = flat.amax(-1, keepdim=True)
    cdf = torch.sub(flat, top)
    if temperature != 1.0:
        cdf.div_(temperature)
    cdf.exp_().cumsum_(-1)
    total = cdf[:, -1:]
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device) * total
    choice = torch.searchsorted(cdf, u).clamp_(max=cdf.shape[-1] - 1)
    token_logprobs = ((flat.gather(-1, choice) - top) / temperature - total.log()).squeeze(-1)
    tokens = (index.gather(-1, choice) if index is not None else choice).squeeze(-1)
    return tokens.view(shape), token_logprobs.view(shape)
