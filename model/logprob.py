"""Log-probabilities of sampled codes under a policy's logits: the learner's ``L_pg`` and the judges' teacher
log-likelihood read the same numbers."""
from __future__ import annotations

import torch


def token_logprobs(logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``log π(codes[n,k,t] | ...)``: ``logits [N, K, T, V]``, ``codes [N, K, T]`` -> ``[N, K, T]`` (float32)."""
    return torch.log_softmax(logits.float(), -1).gather(-1, codes[..., None]).squeeze(-1)


def sequence_logprob(logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``Σ_{k,t} log π(codes[n,k,t] | ...)``: ``logits [N, K, T, V]``, ``codes [N, K, T]`` -> ``[N]``."""
    return token_logprobs(logits, codes).sum(dim=(1, 2))
