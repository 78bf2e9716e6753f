"""The diversity reward, as pure tensor functions.

``r_i = mean_{j≠i} (1 − cos(e_i, e_j))`` over the G samples of one group; the group's diversity metric is
``1 − mean pairwise cosine``, which equals ``mean_i r_i``.
"""
from __future__ import annotations

import torch


def diversity_reward(emb: torch.Tensor) -> torch.Tensor:
    """Per-sample reward for groups of embeddings: ``emb [..., G, E]`` -> ``r [..., G]``, batched over groups.

    Embeddings need not be unit-norm; cosines are taken on normalised copies. G must be >= 2.
    """
    g = emb.shape[-2]
    if g < 2:
        raise ValueError(f"the diversity reward needs groups of >= 2 samples, got G={g}")
    unit = torch.nn.functional.normalize(emb.float(), dim=-1)
    cos = unit @ unit.transpose(-1, -2)  # [..., G, G], diagonal = 1
    # Sum over j≠i of (1 − cos): the diagonal contributes exactly 0 once its cosine is taken as 1.
    off_diag = (1.0 - cos).sum(-1) - (1.0 - cos.diagonal(dim1=-2, dim2=-1))
    return off_diag / (g - 1)


def group_diversity(emb: torch.Tensor) -> torch.Tensor:
    """``1 − mean pairwise cosine`` of each group: ``emb [..., G, E]`` -> ``[...]``."""
    return diversity_reward(emb).mean(-1)
