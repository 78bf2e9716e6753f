"""Bootstrap intervals, t intervals and Pareto hypervolumes, against hand computations and known means."""
import math

import numpy as np
import pytest

from divcfg.reward.intervals import (
    bootstrap_indices,
    check_bootstrap,
    difference_interval,
    family_hypervolume,
    hypervolume,
    hypervolume_draws,
    mean_interval,
    pareto_front,
    point_mean,
    ratio_interval,
    reference_point,
    resampled_means,
    seed_interval,
    t_quantile,
)


def test_hypervolume_of_one_point_is_its_box_above_the_reference():
    assert hypervolume(np.array([[0.6, 0.5]]), (0.1, 0.2)) == pytest.approx(0.5 * 0.3)


def test_hypervolume_of_a_staircase_by_hand():
    # (0.6, 0.3) and (0.4, 0.5) above (0, 0): 0.6·0.3 + 0.4·(0.5 − 0.3) = 0.26
    front = np.array([[0.6, 0.3], [0.4, 0.5]])
    assert hypervolume(front, (0.0, 0.0)) == pytest.approx(0.26)
    # three steps: 0.9·0.1 + 0.5·(0.4 − 0.1) + 0.2·(0.8 − 0.4) = 0.09 + 0.15 + 0.08 = 0.32
    assert hypervolume(np.array([[0.2, 0.8], [0.9, 0.1], [0.5, 0.4]]), (0.0, 0.0)) == pytest.approx(0.32)


def test_dominated_and_duplicate_points_add_nothing():
    front = np.array([[0.6, 0.3], [0.4, 0.5]])
    extra = np.array([[0.3, 0.2],    # dominated by both
                      [0.4, 0.5],    # a duplicate of a front point
                      [0.6, 0.1],    # same x as a front point, lower y: weakly dominated
                      [0.2, 0.5]])   # same y, lower x: weakly dominated
    assert hypervolume(np.vstack([front, extra]), (0.0, 0.0)) == pytest.approx(0.26)
    assert sorted(pareto_front(np.vstack([front, extra])).tolist()) == [0, 1]
    assert len(pareto_front(np.array([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]]))) == 1


def test_points_below_the_reference_add_nothing():
    ref = (0.2, 0.2)
    assert hypervolume(np.array([[0.1, 0.9], [0.9, 0.1], [0.2, 0.5]]), ref) == 0.0
    # (0.5, 0.4) gives 0.3·0.2; (0.1, 0.9) is left of the reference and adds nothing above it
    assert hypervolume(np.array([[0.5, 0.4], [0.1, 0.9]]), ref) == pytest.approx(0.06)
    assert hypervolume(np.array([[math.nan, 0.9], [0.5, 0.4]]), ref) == pytest.approx(0.06)


def test_reference_point_is_the_worst_minus_a_margin():
    pts = np.array([[0.4, 0.7], [0.5, 0.6], [0.6, 0.9]])
    assert reference_point(pts, margin=0.05) == pytest.approx((0.4 - 0.01, 0.6 - 0.015))
    assert reference_point(np.array([[0.3, 0.3]])) == pytest.approx((0.29, 0.29))  # no span: 0.01


def test_bootstrap_below_100_is_refused():
    with pytest.raises(ValueError, match="--bootstrap=99: a bootstrap needs >= 100 rounds"):
        check_bootstrap(99)
    with pytest.raises(ValueError, match="--bootstrap=10"):
        bootstrap_indices(20, 10)
    check_bootstrap(100)


def test_seed_mean_and_t_interval_by_hand():
    mean, lo, hi = seed_interval([1.0, 2.0, 3.0])  # sd 1, n 3, t(2) = 4.303
    assert mean == 2.0 and hi - mean == pytest.approx(4.303 / math.sqrt(3)) and mean - lo == pytest.approx(hi - mean)
    assert math.isnan(seed_interval([0.5])[1]) and seed_interval([0.5])[0] == 0.5
    assert t_quantile(30) == 2.042 and t_quantile(60) == pytest.approx(2.000, abs=1e-3)  # table: 2.000
    assert t_quantile(120) == pytest.approx(1.980, abs=1e-3)


def test_seeds_are_averaged_and_nan_prompts_skipped():
    scores = np.array([[0.2, 0.4, math.nan], [0.6, 0.8, 1.0]])  # seed means 0.3 and 0.8
    assert point_mean(scores) == pytest.approx(0.55)
    idx = np.array([[0, 0, 0], [2, 2, 2], [1, 2, 0]])
    # round 0: seeds 0.2, 0.6 -> 0.4; round 1: seed 0 all NaN, seed 1 1.0 -> 1.0; round 2: 0.3, 0.8 -> 0.55
    assert resampled_means(scores, idx) == pytest.approx([0.4, 1.0, 0.55])


def _coverage_bound(trials: int, nominal: float = 0.95) -> float:
    """Five binomial standard deviations plus 0.02 for the percentile bootstrap's small-sample undercoverage."""
    return 5 * math.sqrt(nominal * (1 - nominal) / trials) + 0.02


def test_bootstrap_interval_covers_a_known_mean_about_95_percent():
    rng, trials, hits, widths = np.random.default_rng(0), 400, 0, []
    for t in range(trials):
        x = rng.normal(0.5, 0.2, size=60)
        ci = mean_interval(x, bootstrap_indices(60, 200, seed=t))
        hits += ci["lo"] <= 0.5 <= ci["hi"]
        widths.append(ci["hi"] - ci["lo"])
    assert abs(hits / trials - 0.95) <= _coverage_bound(trials)
    # the width is the normal interval's, 2 · 1.96 · 0.2 / √60, to within the bootstrap's noise
    assert np.mean(widths) == pytest.approx(2 * 1.96 * 0.2 / math.sqrt(60), rel=0.08)


def test_paired_difference_covers_the_true_effect_and_cancels_prompt_difficulty():
    rng, trials, hits, paired, unpaired = np.random.default_rng(1), 300, 0, [], []
    for t in range(trials):
        difficulty = rng.normal(0, 0.3, size=50)  # shared by both rows: it must not widen the difference
        a = difficulty + 0.1 + rng.normal(0, 0.05, size=50)
        b = difficulty + rng.normal(0, 0.05, size=50)
        idx = bootstrap_indices(50, 200, seed=t)
        d = difference_interval(a, b, idx)
        hits += d["lo"] <= 0.1 <= d["hi"]
        paired.append(d["hi"] - d["lo"])
        a_ci = mean_interval(a, idx)
        unpaired.append(a_ci["hi"] - a_ci["lo"])
    assert abs(hits / trials - 0.95) <= _coverage_bound(trials)
    assert np.mean(paired) < 0.3 * np.mean(unpaired)


def test_seed_t_interval_covers_a_known_mean():
    rng, trials = np.random.default_rng(2), 2000
    hits = sum(lo <= 1.0 <= hi for _, lo, hi in (seed_interval(rng.normal(1.0, 0.3, size=3)) for _ in range(trials)))
    assert abs(hits / trials - 0.95) <= 5 * math.sqrt(0.95 * 0.05 / trials)


def test_family_hypervolume_and_its_bootstrap_draws():
    # two rows of per-prompt scores on 4 prompts; means (0.5, 0.3) and (0.3, 0.6)
    fam = [(np.array([0.4, 0.6, 0.5, 0.5]), np.array([0.3, 0.3, 0.2, 0.4])),
           (np.array([0.3, 0.3, 0.3, 0.3]), np.array([0.6, 0.6, 0.6, 0.6]))]
    ref = (0.0, 0.0)
    assert family_hypervolume(fam, ref) == pytest.approx(0.5 * 0.3 + 0.3 * 0.3)
    idx = np.array([[0, 1, 2, 3], [0, 0, 0, 0], [1, 1, 1, 1]])
    # round 1: (0.4, 0.3), (0.3, 0.6) -> 0.4·0.3 + 0.3·0.3; round 2: (0.6, 0.3) -> 0.6·0.3 + 0.3·0.3
    assert hypervolume_draws(fam, idx, ref) == pytest.approx([0.24, 0.21, 0.27])


def test_the_judge_ratio_and_its_paired_interval():
    """0.6 of the clips right after the round trip against 0.8 as rendered: ratio 0.75; a resample that keeps every
    clip once gives it exactly, and the paired interval brackets it."""
    ceiling = np.array([1.0] * 8 + [0.0] * 2)
    hits = np.array([1.0] * 6 + [0.0] * 4)
    got = ratio_interval(hits, ceiling, np.tile(np.arange(10), (100, 1)))
    assert got == pytest.approx({"ratio": 0.75, "low": 0.75, "high": 0.75})
    idx = np.random.default_rng(0).integers(0, 10, (1000, 10))
    got = ratio_interval(hits, ceiling, idx)
    assert got["low"] < 0.75 < got["high"] and got["high"] - got["low"] > 0.1


def test_ratios_by_group_splits_the_clips_and_matches_the_whole():
    """Each group's ratio is its own clips' accuracy after over before; "all" is the ratio over every clip; a
    one-clip group has no interval. Hand-computed: group a hits 1,1,0 of ceiling 1,1,1; group b 0,1 of 1,1."""
    from divcfg.reward.intervals import ratios_by_group
    hits = {"density": np.array([1, 1, 0, 0, 1, 1.0])}
    ceiling = {"density": np.array([1, 1, 1, 1, 1, 0.0])}
    got = ratios_by_group(hits, ceiling, ["a", "a", "a", "b", "b", "c"], rounds=200)
    assert got["a"]["clips"] == 3 and got["a"]["density"]["ratio"] == pytest.approx(2 / 3)
    assert got["b"]["density"]["ratio"] == pytest.approx(0.5)
    assert got["all"]["density"]["ratio"] == pytest.approx((4 / 6) / (5 / 6))
    assert got["all"]["density"]["low"] <= got["all"]["density"]["ratio"] <= got["all"]["density"]["high"]
    assert got["c"]["clips"] == 1 and got["c"]["density"]["low"] is None  # one clip: no bootstrap
    assert got["a"]["density"]["round_trip"] == pytest.approx(2 / 3) and got["a"]["density"]["rendered"] == 1.0
