"""Kernel audio distance (MMD² under an RBF kernel) against hand-computed values and Gaussian closed forms."""
import math

import numpy as np
import pytest

from divcfg.reward.kad import (
    kad,
    kad_interval,
    median_bandwidth,
    mmd2,
    mmd2_from_blocks,
    rbf_kernel,
    reference_bandwidth,
)


def gaussian_mmd2(mean_shift, std: float, bandwidth: float) -> float:
    """Population MMD² between N(0, s²I) and N(μ, s²I) in d dimensions, RBF kernel exp(−‖a − b‖²/(2l²)):
    x − x' ~ N(0, 2s²I) within a set and N(μ, 2s²I) across, and E exp(−‖z‖²/(2l²)) for z ~ N(m, 2s²I) is
    (l²/(l² + 2s²))^{d/2} exp(−‖m‖²/(2(l² + 2s²))), so

        MMD² = (l²/(l² + 2s²))^{d/2} · 2 · (1 − exp(−‖μ‖²/(2(l² + 2s²))))."""
    mu = np.asarray(mean_shift, dtype=float)
    spread = bandwidth ** 2 + 2 * std ** 2
    return (bandwidth ** 2 / spread) ** (mu.size / 2) * 2 * (1 - math.exp(-np.sum(mu ** 2) / (2 * spread)))


def test_two_tiny_sets_by_hand():
    # x = {0, 1}, y = {0, 2} in one dimension, l = 1: k(d) = exp(−d²/2).
    x, y = np.array([[0.0], [1.0]]), np.array([[0.0], [2.0]])
    e1, e4 = math.exp(-0.5), math.exp(-2.0)  # k at distance 1 and 2
    within_x, within_y = e1, e4  # the one off-diagonal pair of each set
    across = (1 + e4 + e1 + e1) / 4  # (0,0), (0,2), (1,0), (1,2)
    unbiased = within_x + within_y - 2 * across  # = (e4 − 1)/2 ≈ −0.432: the U-statistic can go below 0
    biased = (2 + 2 * e1) / 4 + (2 + 2 * e4) / 4 - 2 * across  # = (1 − e1)/2 ≈ 0.197
    assert mmd2(x, y, bandwidth=1.0) == pytest.approx(unbiased, abs=1e-12)
    assert unbiased == pytest.approx((e4 - 1) / 2, abs=1e-12) and unbiased < 0
    assert mmd2(x, y, bandwidth=1.0, unbiased=False) == pytest.approx(biased, abs=1e-12)
    assert biased == pytest.approx((1 - e1) / 2, abs=1e-12)
    # pooled {0, 1, 0, 2}: pair distances 1, 0, 2, 1, 1, 2 -> median 1, so the heuristic picks l = 1 here
    assert median_bandwidth(x, y) == pytest.approx(1.0)
    assert kad(x, y) == {"kad": pytest.approx(unbiased, abs=1e-12), "bandwidth": pytest.approx(1.0),
                         "n_a": 2, "n_b": 2}


def test_identical_sets_v_statistic_is_zero_and_u_statistic_is_not():
    """The U-statistic of a set against itself is not 0: the across mean keeps the N self-pairs (k = 1) that the
    within means drop, giving exactly −(2/N)(1 − mean off-diagonal k). The V-statistic is exactly 0."""
    x = np.random.default_rng(0).normal(size=(30, 5))
    k = rbf_kernel(((x[:, None] - x[None]) ** 2).sum(-1), 2.0)
    off_diagonal = (k.sum() - np.trace(k)) / (30 * 29)
    assert mmd2(x, x, bandwidth=2.0) == pytest.approx(-(2 / 30) * (1 - off_diagonal), rel=1e-10)
    assert mmd2(x, x, bandwidth=2.0, unbiased=False) == pytest.approx(0.0, abs=1e-12)
    assert mmd2_from_blocks(k, k, k, unbiased=False) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("shift", [0.0, 1.0])
@pytest.mark.parametrize("n, draws", [(10, 300), (400, 10)])
def test_u_statistic_mean_is_the_closed_form_and_v_statistic_is_biased(shift, n, draws):
    """Independent draws of N(0, I) and N(μ, I) clips (d = 4, l = 2): the mean of the U-statistics is within 4
    standard errors (measured from the draws' own spread) of the population MMD², at 10 clips per set as at 400;
    at 10 clips the V-statistic's mean sits far above it (bias ≈ 2(1 − E k(x, x'))/N ≈ 0.11)."""
    d, bandwidth = 4, 2.0
    mu = np.zeros(d)
    mu[0] = shift
    truth = gaussian_mmd2(mu, 1.0, bandwidth)
    rng = np.random.default_rng(int(10 * shift) + n)
    u, v = [], []
    for _ in range(draws):
        a, b = rng.normal(size=(n, d)), rng.normal(size=(n, d)) + mu
        u.append(mmd2(a, b, bandwidth))
        v.append(mmd2(a, b, bandwidth, unbiased=False))
    u, v = np.array(u), np.array(v)
    se = u.std(ddof=1) / math.sqrt(draws)
    assert abs(u.mean() - truth) < 4 * se, (u.mean(), truth, se)
    if n == 10:
        assert v.mean() - truth > 20 * se
    if shift == 0.0:
        assert truth == 0.0 and abs(u.mean()) < 4 * se
    else:
        assert truth == pytest.approx(0.0711, abs=1e-4)


def test_median_heuristic_is_the_pooled_median_and_symmetric():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(7, 3)), rng.normal(size=(5, 3)) + 1.0
    pooled = np.concatenate([a, b])
    dists = [np.linalg.norm(pooled[i] - pooled[j]) for i in range(12) for j in range(i + 1, 12)]
    assert median_bandwidth(a, b) == pytest.approx(float(np.median(dists)), rel=1e-12)
    ab, ba = kad(a, b), kad(b, a)
    assert ab["bandwidth"] == pytest.approx(ba["bandwidth"]) and ab["kad"] == pytest.approx(ba["kad"], rel=1e-12)
    assert kad(a, b, bandwidth=0.7)["bandwidth"] == 0.7  # a given bandwidth is used and recorded


def test_reference_bandwidth_is_the_median_over_one_set_only():
    """The eval's one kernel for every row: pairs of distinct reference clips only (pooling the set with itself
    would add a zero distance for every clip and pull the median down)."""
    ref = np.array([[0.0], [1.0], [3.0], [7.0]])  # distances 1, 2, 3, 4, 6, 7: median 3.5
    assert reference_bandwidth(ref) == pytest.approx(3.5, rel=1e-12)
    assert median_bandwidth(ref, ref) == pytest.approx(3.0, rel=1e-12)  # with its 4 zeros, each distance 4 times


def test_interval_covers_a_known_mmd2_when_copies_are_left_out():
    """Gaussians with a small known MMD² (0.0066 at 100 clips each): the 90% interval covers it about 90% of the
    time. Keeping each resampled clip's pairs with its own copies (k = 1), as the plain U-statistic of a resample
    would, lifts the resamples and the reflected interval covers it about half the time."""
    d, bandwidth = 4, 2.0
    mu = np.array([0.3, 0, 0, 0])
    truth = gaussian_mmd2(mu, 1.0, bandwidth)
    rng = np.random.default_rng(2)
    covered, covered_with_copies = 0, 0
    for r in range(40):
        a, b = rng.normal(size=(100, d)), rng.normal(size=(100, d)) + mu
        ci = kad_interval(a, b, bandwidth=bandwidth, n_boot=100, seed=r)
        covered += ci["low"] <= truth <= ci["high"]
        k = rbf_kernel(((np.concatenate([a, b])[:, None] - np.concatenate([a, b])[None]) ** 2).sum(-1), bandwidth)
        boot_rng = np.random.default_rng(r)
        boot = []
        for _ in range(100):
            ia, ib = boot_rng.integers(0, 100, 100), 100 + boot_rng.integers(0, 100, 100)
            boot.append(mmd2_from_blocks(k[np.ix_(ia, ia)], k[np.ix_(ib, ib)], k[np.ix_(ia, ib)]))
        q_low, q_high = np.quantile(boot, [0.05, 0.95])
        covered_with_copies += 2 * ci["kad"] - q_high <= truth <= 2 * ci["kad"] - q_low
    assert covered >= 32 and covered_with_copies <= 28, (covered, covered_with_copies)


def test_interval_fields_and_estimate_inside():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(60, 3)), rng.normal(size=(40, 3)) + 1.0
    ci = kad_interval(a, b, n_boot=100)
    assert set(ci) == {"kad", "low", "high", "level", "bandwidth", "n_a", "n_b"}
    assert ci["low"] <= ci["kad"] <= ci["high"] and (ci["n_a"], ci["n_b"], ci["level"]) == (60, 40, 0.9)
    assert ci["kad"] == kad(a, b)["kad"] and ci["bandwidth"] == median_bandwidth(a, b)
    assert kad_interval(a[:2], b[:2], n_boot=100)["n_a"] == 2  # resamples of one repeated clip are skipped


def test_bad_input():
    with pytest.raises(ValueError, match="feature dimensions differ, 3 against 4"):
        kad(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match=r"features \[N >= 2, D\], got shape \(1, 3\)"):
        kad(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        kad(np.full((3, 2), np.nan), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="median distance between clips is 0"):
        kad(np.zeros((4, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="bandwidth must be > 0"):
        kad(np.eye(3), np.eye(3), bandwidth=0.0)
