"""The method's losses and advantages, as pure tensor functions (METHOD.md, "Objective").

Each takes explicit tensors and returns a tensor (and, for losses, a dict of float metrics). Shapes: N samples,
K codebooks, T frames, V vocabulary, G samples per group.
"""
from __future__ import annotations

import torch

BASELINES = ("none", "mean", "loo")
KL_REDUCTIONS = ("mean", "sum")


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               weights: torch.Tensor | None = None, reduction: str = "mean",
               normalizer: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Exact token-level ``KL(π_student ‖ π_teacher)`` over the full vocabulary, averaged over samples, positions
    and codebooks (METHOD.md). ``*_logits [N, K, T, V]``; optional per-sample ``weights [N]`` (importance weights).

    ``reduction="sum"`` sums over each sample's positions and codebooks instead (then averages over samples): the
    per-sequence KL, on the same scale as ``L_pg``'s sequence log-prob (``algo.kl_reduction``).

    ``normalizer`` divides the (weighted) sum over samples instead of their count ``N``: a learner-group worker
    holding a share of the batch passes the whole batch's sample count, so the workers' losses (and gradients) add
    up to the one-worker loss exactly, however unevenly the batch was split.

    Returns ``(loss, {"kl": unweighted per-code mean KL of these N samples, whatever the reduction})``. Gradients
    flow into the student only.
    """
    assert student_logits.shape == teacher_logits.shape, (student_logits.shape, teacher_logits.shape)
    if reduction not in KL_REDUCTIONS:
        raise ValueError(f"unknown KL reduction {reduction!r}; choose one of {KL_REDUCTIONS}")
    log_s = torch.log_softmax(student_logits.float(), -1)
    log_t = torch.log_softmax(teacher_logits.detach().float(), -1)
    kl = (log_s.exp() * (log_s - log_t)).sum(-1)  # [N, K, T]
    per_sample = kl.mean(dim=(1, 2))
    scaled = per_sample if reduction == "mean" else per_sample * (kl.shape[1] * kl.shape[2])
    loss = _average(scaled if weights is None else weights * scaled, normalizer)
    return loss, {"kl": per_sample.mean().item()}


def _average(per_sample: torch.Tensor, normalizer: float | None) -> torch.Tensor:
    """The mean over samples, or their sum over ``normalizer`` (the sample count of the whole batch)."""
    return per_sample.mean() if normalizer is None else per_sample.sum() / normalizer


def group_advantages(rewards: torch.Tensor, baseline: str) -> torch.Tensor:
    """``rewards [..., G]`` -> ``r_i − b_i``. Baselines: none (b = 0), mean (group mean, including i), loo
    (leave-one-out: mean of the other G − 1 rewards, which keeps the estimator unbiased)."""
    if baseline == "none":
        return rewards
    g = rewards.shape[-1]
    if baseline == "mean":
        return rewards - rewards.mean(-1, keepdim=True)
    if baseline == "loo":
        if g < 2:
            raise ValueError("the leave-one-out baseline needs groups of >= 2 samples")
        return rewards - (rewards.sum(-1, keepdim=True) - rewards) / (g - 1)
    raise ValueError(f"unknown baseline {baseline!r}; choose one of {BASELINES}")


def truncated_importance_weights(logp_current: torch.Tensor, logp_behaviour: torch.Tensor,
                                 clip: float) -> torch.Tensor:
    """Per-sequence ``min(π_θ(y) / μ(y), clip)``, detached: ``[N]`` log-probs of the current and sampling policies."""
    return torch.exp(logp_current.detach() - logp_behaviour).clamp(max=clip)


def reinforce_loss(seq_logprob: torch.Tensor, advantages: torch.Tensor, weights: torch.Tensor | None = None,
                   normalizer: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """``L_pg = − mean_i w_i (r_i − b_i) Σ_t log π_θ(y_i,t | …)``; all inputs ``[N]``, advantages constant.
    ``normalizer``: as in :func:`reverse_kl`, the whole batch's sample count when these ``N`` are one share of it."""
    w = torch.ones_like(advantages) if weights is None else weights
    loss = -_average(w * advantages.detach() * seq_logprob, normalizer)
    return loss, {"pg": loss.item(), "advantage_abs": advantages.abs().mean().item()}
