"""Fréchet audio distance against closed forms and an independent eigenvalue reference."""
import numpy as np
import pytest

from divcfg.reward.fad import fad, fad_by_clips, fad_interval, frechet_distance, gaussian_fit, sqrtm_psd


def test_diagonal_gaussians_match_the_closed_form():
    # Diagonal covariances commute: FAD = ‖μa − μb‖² + Σ (√a_i − √b_i)².
    mu_a, mu_b = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    var_a, var_b = np.array([4.0, 1.0, 9.0]), np.array([1.0, 1.0, 0.25])
    expected = (1 + 0 + 4) + (2 - 1) ** 2 + 0 + (3 - 0.5) ** 2  # = 12.25
    assert frechet_distance(mu_a, np.diag(var_a), mu_b, np.diag(var_b)) == pytest.approx(expected, abs=1e-12)
    assert expected == 12.25


def test_general_covariances_match_the_eigenvalues_of_the_product():
    # tr (Σa Σb)^½ = Σ √λ_i(Σa Σb): an independent reference through the non-symmetric product's eigenvalues.
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    sa, sb = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    mu_a, mu_b = rng.normal(size=5), rng.normal(size=5)
    lam = np.linalg.eigvals(sa @ sb)
    expected = np.sum((mu_a - mu_b) ** 2) + np.trace(sa) + np.trace(sb) - 2 * np.sqrt(lam.real).sum()
    assert frechet_distance(mu_a, sa, mu_b, sb) == pytest.approx(expected, rel=1e-9)


def test_sqrtm_psd_squares_back_and_survives_rank_deficiency():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 6))  # rank 3 in 6 dimensions: eigenvalues at 0, a few slightly negative by round-off
    s = x.T @ x
    r = sqrtm_psd(s)
    assert np.allclose(r @ r, s, atol=1e-10) and np.allclose(r, r.T)
    assert np.isfinite(frechet_distance(np.zeros(6), s, np.ones(6), sqrtm_psd(s)))


def test_identical_sets_give_zero_and_shifted_sets_the_mean_shift():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 64))  # fewer clips than dimensions, as with 4 samples per prompt
    assert fad(x, x) == pytest.approx(0.0, abs=1e-8)
    shift = np.zeros(64)
    shift[0] = 3.0
    assert fad(x, x + shift) == pytest.approx(9.0, rel=1e-8)  # same covariance: only ‖Δμ‖² remains


def test_fit_and_bad_input():
    mu, sigma = gaussian_fit([[0.0, 2.0], [2.0, 0.0]])
    assert np.allclose(mu, [1, 1]) and np.allclose(sigma, [[2, -2], [-2, 2]])
    with pytest.raises(ValueError, match="feature dimensions differ, 3 against 4"):
        fad(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="features \\[N >= 2, D\\], got shape \\(1, 3\\)"):
        fad(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        fad(np.full((3, 2), np.nan), np.zeros((3, 2)))


def test_interval_covers_the_estimate_and_size_curve_finds_stability():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(300, 4))
    b = rng.normal(size=(300, 4)) + np.array([2.0, 0, 0, 0])  # true FAD = 4
    ci = fad_interval(a, b, n_boot=100, seed=0)
    assert ci["low"] <= ci["fad"] <= ci["high"] and ci["low"] < 4.0 < ci["high"] + 0.5
    assert (ci["n_a"], ci["n_b"]) == (300, 300)
    by = fad_by_clips(a, b, sizes=[8, 32, 128, 300, 1000], draws=10, tolerance=0.1)
    assert [c["clips"] for c in by["curve"]] == [8, 32, 128, 300]  # 1000 is more than the sets hold
    assert by["curve"][0]["std"] > by["curve"][2]["std"]  # fewer clips, more spread
    assert by["stable_clips"] in (32, 128, 300)


def test_the_interval_covers_a_known_fad_where_the_resamples_percentiles_do_not():
    """Gaussians with a known FAD: the finite-sample estimate is biased upwards, and the bias-corrected interval
    still covers the truth about as often as its level says; the resamples' own percentiles almost never do."""
    rng = np.random.default_rng(1)
    mu_a, sigma_a = np.full(8, 0.1), np.diag(np.linspace(0.8, 1.3, 8))
    true = frechet_distance(mu_a, sigma_a, np.zeros(8), np.eye(8))
    covered, percentile_covered = 0, 0
    for r in range(40):
        a, b = rng.multivariate_normal(mu_a, sigma_a, 300), rng.normal(size=(200, 8))
        ci = fad_interval(a, b, n_boot=100, seed=r)
        covered += ci["low"] <= true <= ci["high"]
        # the percentiles the interval is reflected from: q = 2·FAD − bound
        percentile_covered += 2 * ci["fad"] - ci["high"] <= true <= 2 * ci["fad"] - ci["low"]
    assert covered >= 30 and percentile_covered <= 5, (covered, percentile_covered)


def _with_moments(rng, n: int, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """``[n, D]`` features whose sample mean is ``mean`` and unbiased sample covariance ``diag(var)`` exactly:
    Gaussian draws, centred and whitened by their own covariance's Cholesky factor, then scaled and shifted."""
    z = rng.normal(size=(n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    return z * np.sqrt(var) + mean


def test_feature_sets_with_known_moments_match_the_closed_form():
    """FAD of two feature sets (not of two given Gaussians) against ‖μa − μb‖² + tr(Σa + Σb − 2 (Σa Σb)^½), which
    for diagonal covariances is ‖μa − μb‖² + Σ (√a_i − √b_i)²; and 0 for one set against a reordering of itself."""
    rng = np.random.default_rng(4)
    mu_a, mu_b = np.array([0.5, -1.0, 2.0, 0.0]), np.array([0.0, 1.0, 2.0, -0.5])
    var_a, var_b = np.array([1.0, 4.0, 0.25, 2.0]), np.array([9.0, 1.0, 0.25, 0.5])
    a, b = _with_moments(rng, 50, mu_a, var_a), _with_moments(rng, 80, mu_b, var_b)
    assert np.allclose(gaussian_fit(a)[1], np.diag(var_a), atol=1e-12)
    sa, sb = np.diag(var_a), np.diag(var_b)
    expected = np.sum((mu_a - mu_b) ** 2) + np.trace(sa + sb - 2 * np.diag(np.sqrt(var_a * var_b)))
    assert expected == pytest.approx(4.5 + 4 + 1 + 0 + 0.5)  # ‖Δμ‖² = 4.5; (1 − 3)², (2 − 1)², 0, (√2 − √½)²
    assert fad(a, b) == pytest.approx(expected, rel=1e-10)
    assert fad(a, a[rng.permutation(50)]) == pytest.approx(0.0, abs=1e-10)
