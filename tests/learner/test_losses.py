import math

import pytest
import torch

from divcfg.learner.losses import group_advantages, reinforce_loss, reverse_kl, truncated_importance_weights
from divcfg.model.logprob import sequence_logprob


def test_reverse_kl_hand_computed():
    # One position, V=2: student p = (0.5, 0.5), teacher q = (0.8, 0.2).
    s = torch.log(torch.tensor([0.5, 0.5])).view(1, 1, 1, 2)
    t = torch.log(torch.tensor([0.8, 0.2])).view(1, 1, 1, 2)
    expected = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)
    loss, m = reverse_kl(s, t)
    assert math.isclose(loss.item(), expected, rel_tol=1e-6) and math.isclose(m["kl"], expected, rel_tol=1e-6)


def test_reverse_kl_is_zero_iff_equal_and_weights_apply():
    x = torch.randn(3, 2, 4, 5)
    assert reverse_kl(x, x)[0].item() == pytest.approx(0.0, abs=1e-6)
    y = torch.randn(3, 2, 4, 5)
    full, _ = reverse_kl(x, y)
    per = [reverse_kl(x[i:i + 1], y[i:i + 1])[0].item() for i in range(3)]
    w = torch.tensor([1.0, 0.0, 2.0])
    assert reverse_kl(x, y, w)[0].item() == pytest.approx((per[0] + 2 * per[2]) / 3, rel=1e-5)
    assert full.item() == pytest.approx(sum(per) / 3, rel=1e-5)


def test_reverse_kl_sum_is_the_per_sequence_kl():
    # Two samples, K=1, T=2, V=2. Sample 0: KLs a (p=(.5,.5) vs q=(.8,.2)) and 0; sample 1: 0 and 0.
    half, skew = torch.log(torch.tensor([0.5, 0.5])), torch.log(torch.tensor([0.8, 0.2]))
    s = torch.stack([half, half, half, half]).view(2, 1, 2, 2)
    t = torch.stack([skew, half, half, half]).view(2, 1, 2, 2)
    a = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)
    mean, m_mean = reverse_kl(s, t)
    total, m_sum = reverse_kl(s, t, reduction="sum")
    assert mean.item() == pytest.approx(a / 4, rel=1e-6)  # mean over 2 samples x 2 codes
    assert total.item() == pytest.approx(a / 2, rel=1e-6)  # per-sequence sums (a, 0), mean over samples
    assert m_mean["kl"] == pytest.approx(a / 4, rel=1e-6) and m_sum["kl"] == m_mean["kl"]  # the logged KL is per code
    w = torch.tensor([2.0, 1.0])
    assert reverse_kl(s, t, w, "sum")[0].item() == pytest.approx(2 * a / 2, rel=1e-6)
    with pytest.raises(ValueError, match="unknown KL reduction 'max'"):
        reverse_kl(s, t, reduction="max")


def test_reverse_kl_gradient_reaches_student_only():
    s = torch.randn(1, 1, 2, 3, requires_grad=True)
    t = torch.randn(1, 1, 2, 3, requires_grad=True)
    reverse_kl(s, t)[0].backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


def test_sequence_logprob_hand_computed():
    logits = torch.log(torch.tensor([[0.25, 0.75], [0.5, 0.5]])).view(1, 1, 2, 2)  # N=1,K=1,T=2,V=2
    codes = torch.tensor([[[1, 0]]])
    assert sequence_logprob(logits, codes).item() == pytest.approx(math.log(0.75) + math.log(0.5))


def test_advantages_hand_computed():
    r = torch.tensor([[1.0, 2.0, 6.0]])
    assert group_advantages(r, "none").tolist() == [[1.0, 2.0, 6.0]]
    assert group_advantages(r, "mean").tolist() == [[-2.0, -1.0, 3.0]]
    # loo: 1 - (2+6)/2 = -3; 2 - (1+6)/2 = -1.5; 6 - (1+2)/2 = 4.5
    assert group_advantages(r, "loo").tolist() == [[-3.0, -1.5, 4.5]]
    with pytest.raises(ValueError, match="unknown baseline 'median'"):
        group_advantages(r, "median")


def test_importance_weights_truncate():
    new = torch.log(torch.tensor([0.5, 0.9, 0.1]))
    old = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    assert torch.allclose(truncated_importance_weights(new, old, 2.0), torch.tensor([1.0, 2.0, 0.5]))


def test_reinforce_hand_computed_and_gradient_direction():
    seq_lp = torch.tensor([-2.0, -3.0], requires_grad=True)
    adv = torch.tensor([1.0, -1.0])
    loss, _ = reinforce_loss(seq_lp, adv, torch.tensor([1.0, 0.5]))
    assert loss.item() == pytest.approx(-(1 * 1 * -2.0 + 0.5 * -1 * -3.0) / 2)
    loss.backward()
    # Minimising the loss raises the log-prob of the positive-advantage sample and lowers the other.
    assert seq_lp.grad[0] < 0 < seq_lp.grad[1]


def test_baselines_on_groups_of_a_batch_hand_computed():
    """``rewards [2, 2, 3]``: each baseline along the last axis only, against a plain loop; G = 1 can't have a LOO."""
    r = torch.tensor([[[1.0, 2.0, 6.0], [0.0, 3.0, 3.0]], [[4.0, 4.0, 1.0], [2.0, 0.0, 1.0]]])
    for baseline, b in (("mean", lambda g, i: sum(g) / 3), ("loo", lambda g, i: (sum(g) - g[i]) / 2)):
        ref = [[[g[i] - b(g, i) for i in range(3)] for g in batch] for batch in r.tolist()]
        assert torch.allclose(group_advantages(r, baseline), torch.tensor(ref)), baseline
    with pytest.raises(ValueError, match="the leave-one-out baseline needs groups of >= 2 samples"):
        group_advantages(torch.ones(4, 1), "loo")


def test_losses_of_shares_divided_by_the_whole_batch_add_up_to_the_batch_loss():
    """``normalizer``: a share's sum over the whole batch's sample count, so two shares add up to the batch's mean."""
    gen = torch.Generator().manual_seed(7)
    s, t = torch.randn(4, 2, 3, 5, generator=gen), torch.randn(4, 2, 3, 5, generator=gen)
    w, adv, lp = torch.tensor([0.5, 1.0, 2.0, 1.5]), torch.tensor([1.0, -2.0, 0.5, 3.0]), torch.randn(4, generator=gen)
    kl = sum(reverse_kl(s[i:i + 2], t[i:i + 2], w[i:i + 2], normalizer=4)[0] for i in (0, 2))
    pg = sum(reinforce_loss(lp[i:i + 2], adv[i:i + 2], w[i:i + 2], normalizer=4)[0] for i in (0, 2))
    assert kl.item() == pytest.approx(reverse_kl(s, t, w)[0].item(), rel=1e-6)
    assert pg.item() == pytest.approx(reinforce_loss(lp, adv, w)[0].item(), rel=1e-6)
    unweighted, m = reinforce_loss(lp, adv)  # no weights: each is 1
    assert unweighted.item() == pytest.approx(reinforce_loss(lp, adv, torch.ones(4))[0].item(), rel=1e-6)
    assert m == {"pg": pytest.approx(unweighted.item()), "advantage_abs": pytest.approx(1.625)}  # mean |adv|
    half = reverse_kl(s[:2], t[:2], w[:2])[0].item()
    assert reverse_kl(s[:2], t[:2], w[:2], normalizer=4)[0].item() == pytest.approx(half / 2, rel=1e-6)
