import math

import pytest
import torch

from divcfg.reward.diversity import diversity_reward, group_diversity


def reference_reward(emb):
    """Pairwise loop straight from METHOD.md."""
    g = len(emb)
    out = []
    for i in range(g):
        total = 0.0
        for j in range(g):
            if j != i:
                total += 1 - torch.nn.functional.cosine_similarity(emb[i], emb[j], dim=0).item()
        out.append(total / (g - 1))
    return torch.tensor(out)


def test_hand_computed():
    # e0 = x, e1 = y (orthogonal, cos 0), e2 = -x (cos -1 with e0, 0 with e1)
    emb = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    # r0 = ((1-0) + (1-(-1))) / 2 = 1.5; r1 = (1 + 1) / 2 = 1; r2 = (2 + 1) / 2 = 1.5
    assert torch.allclose(diversity_reward(emb), torch.tensor([1.5, 1.0, 1.5]))
    assert math.isclose(group_diversity(emb).item(), 4 / 3, rel_tol=1e-6)


def test_identical_samples_get_zero():
    emb = torch.ones(4, 8)
    assert torch.allclose(diversity_reward(emb), torch.zeros(4), atol=1e-6)


def test_batched_matches_pairwise_loop():
    emb = torch.randn(5, 6, 16)  # 5 groups of 6
    batched = diversity_reward(emb)
    for gi in range(5):
        assert torch.allclose(batched[gi], reference_reward(emb[gi]), atol=1e-5)


def test_group_of_one_is_refused():
    with pytest.raises(ValueError, match="groups of >= 2 samples, got G=1"):
        diversity_reward(torch.randn(3, 1, 4))
