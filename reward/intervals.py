"""Confidence intervals and Pareto-front areas for the evaluation: pure numpy, no model.

A *row* is one configuration measured on the same held-out prompts and sampling seeds as every other row, so its
per-prompt scores pair with theirs. The paired bootstrap resamples prompt indices with replacement once per round and
applies the same resample to every row: a difference between two rows then keeps the prompts' shared difficulty out
of its interval. Seeds (independent training runs of one configuration) are averaged inside each round; their own
spread gets a t interval over the seeds' means.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

MIN_BOOTSTRAP = 100
LEVEL = 0.95

# Student's t 0.975 quantiles for 1..30 degrees of freedom (two-sided 95%); above 30 a Cornish-Fisher expansion.
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def check_bootstrap(n: int, source: str = "--bootstrap") -> None:
    """Fewer than 100 rounds put the 2.5% and 97.5% percentiles on two or three draws: refused."""
    if int(n) != n or n < MIN_BOOTSTRAP:
        raise ValueError(f"{source}={n}: a bootstrap needs >= {MIN_BOOTSTRAP} rounds for its 95% percentiles")


def bootstrap_indices(n_prompts: int, rounds: int, seed: int = 0) -> np.ndarray:
    """``[rounds, n_prompts]`` prompt indices drawn with replacement: one resample per round, shared by all rows."""
    check_bootstrap(rounds)
    if n_prompts < 2:
        raise ValueError(f"a bootstrap over prompts needs >= 2 prompts, got {n_prompts}")
    return np.random.default_rng(seed).integers(0, n_prompts, size=(rounds, n_prompts))


def percentile_interval(draws: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap draws ``[rounds]`` (NaN draws ignored)."""
    draws = np.asarray(draws, dtype=float)
    draws = draws[~np.isnan(draws)]
    if draws.size == 0:
        return (math.nan, math.nan)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(draws, [tail, 100 - tail])
    return (float(lo), float(hi))


def resampled_means(scores: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per-round means ``[rounds]`` of a row's per-prompt scores.

    ``scores [P]`` (one run) or ``[S, P]`` (S seeds on the same prompts: the seeds' means are averaged);
    ``idx [rounds, P]`` from :func:`bootstrap_indices`. NaN scores (a prompt that asked for nothing) are skipped.
    """
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    if scores.shape[1] != idx.shape[1]:
        raise ValueError(f"scores cover {scores.shape[1]} prompts, the bootstrap resamples {idx.shape[1]}")
    picked = scores[:, idx]  # [S, rounds, P]
    return _nanmean(_nanmean(picked, axis=2), axis=0)


def ratio_interval(hits: np.ndarray, ceiling: np.ndarray, idx: np.ndarray) -> dict[str, float]:
    """``mean(hits) / mean(ceiling)`` with its paired percentile interval over the bootstrap's resamples ``idx``.

    ``hits`` and ``ceiling [N]`` score the same N clips (a judge after the codec's round trip and on the clips as
    rendered), so one resample of the clips moves both: the interval carries the clips' shared difficulty.
    """
    hits, ceiling = np.asarray(hits, dtype=float), np.asarray(ceiling, dtype=float)
    ratio = float(hits.mean() / ceiling.mean()) if ceiling.mean() else math.nan
    low, high = percentile_interval(hits[idx].mean(1) / np.maximum(ceiling[idx].mean(1), 1e-12))
    return {"ratio": ratio, "low": low, "high": high}


def ratios_by_group(hits: dict[str, np.ndarray], ceiling: dict[str, np.ndarray], groups: list[str],
                    rounds: int) -> dict[str, dict]:
    """Over all clips and per group of them, each attribute's :func:`ratio_interval` of ``hits`` to ``ceiling`` (both
    ``attribute -> [N]`` over the same N clips; ``groups [N]`` names each clip's group, e.g. its collection), with the
    clips' count and both accuracies. A group of one clip has no interval (``low`` and ``high`` None)."""
    masks = {"all": np.ones(len(groups), bool)} | {g: np.array([x == g for x in groups]) for g in sorted(set(groups))}
    out = {}
    for name, m in masks.items():
        n = int(m.sum())
        idx = bootstrap_indices(n, rounds) if n >= 2 else None
        row: dict = {"clips": n}
        for a in hits:
            h, c = np.asarray(hits[a], dtype=float)[m], np.asarray(ceiling[a], dtype=float)[m]
            r = ratio_interval(h, c, idx) if idx is not None else {
                "ratio": float(h.mean() / c.mean()) if c.mean() else math.nan, "low": None, "high": None}
            row[a] = {**r, "round_trip": float(h.mean()), "rendered": float(c.mean())}
        out[name] = row
    return out


def point_mean(scores: np.ndarray) -> float:
    """The row's estimate: the mean over seeds of each seed's mean over prompts (NaN scores skipped)."""
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    return float(_nanmean(_nanmean(scores, axis=1), axis=0))


def mean_interval(scores: np.ndarray, idx: np.ndarray) -> dict[str, float]:
    """A row's mean over seeds and prompts with its paired-bootstrap 95% interval: ``{estimate, lo, hi}``."""
    lo, hi = percentile_interval(resampled_means(scores, idx))
    return {"estimate": point_mean(scores), "lo": lo, "hi": hi}


def difference_interval(a: np.ndarray, b: np.ndarray, idx: np.ndarray) -> dict[str, float]:
    """Row a's mean minus row b's, with the 95% interval of the paired bootstrap (one resample for both rows)."""
    lo, hi = percentile_interval(resampled_means(a, idx) - resampled_means(b, idx))
    return {"estimate": point_mean(a) - point_mean(b), "lo": lo, "hi": hi}


def seed_interval(values, level: float = LEVEL) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: the mean of per-seed values and its t interval (NaN bounds with fewer than 2 seeds)."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if v.size == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(v.mean())
    if v.size < 2:
        return (mean, math.nan, math.nan)
    half = t_quantile(v.size - 1, level) * float(v.std(ddof=1)) / math.sqrt(v.size)
    return (mean, mean - half, mean + half)


def t_quantile(df: int, level: float = LEVEL) -> float:
    """Two-sided Student's t quantile for ``df`` degrees of freedom (95% only: a table, then an expansion)."""
    if abs(level - 0.95) > 1e-12:
        raise ValueError(f"level={level}: only the 95% t quantile is tabulated")
    if df < 1:
        raise ValueError(f"a t interval needs >= 1 degree of freedom, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963984540054
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def pareto_front(points: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated points of ``points [N, 2]`` (both coordinates maximised), sorted by the first
    coordinate descending. Of duplicate points one is kept; NaN points are never on the front."""
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    ok = np.flatnonzero(~np.isnan(pts).any(axis=1))
    order = ok[np.lexsort((-pts[ok, 1], -pts[ok, 0]))]  # x descending, then y descending
    front, best_y = [], -math.inf
    for i in order:
        if pts[i, 1] > best_y:  # strictly higher y than every point with x >= this one's
            front.append(i)
            best_y = pts[i, 1]
    return np.asarray(front, dtype=int)


def hypervolume(points: np.ndarray, ref: tuple[float, float]) -> float:
    """Area of the (x, y) region dominated by ``points [N, 2]`` and above ``ref`` (both maximised).

    Dominated and duplicate points add nothing; a point at or below the reference in either coordinate adds
    nothing either (its dominated box above ``ref`` is empty).
    """
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    area, prev_y = 0.0, ref[1]
    for i in pareto_front(pts):  # x descending, y ascending along the front
        x, y = pts[i]
        if x <= ref[0] or y <= prev_y:
            continue
        area += (x - ref[0]) * (y - prev_y)
        prev_y = y
    return float(area)


def reference_point(points: np.ndarray, margin: float = 0.05) -> tuple[float, float]:
    """The worst x and the worst y among all ``points [N, 2]``, each minus ``margin`` × its span over the points
    (0.01 when the span is 0): every row's box then has a positive area, and the point is fixed before any
    bootstrap round."""
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    pts = pts[~np.isnan(pts).any(axis=1)]
    if pts.size == 0:
        raise ValueError("a reference point needs at least one measured row")
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    pad = np.where(hi > lo, margin * (hi - lo), 0.01)
    return (float(lo[0] - pad[0]), float(lo[1] - pad[1]))


def hypervolume_draws(family: list[tuple[np.ndarray, np.ndarray]], idx: np.ndarray,
                      ref: tuple[float, float]) -> np.ndarray:
    """Per-round hypervolumes ``[rounds]`` of a family of rows, each ``(x_scores, y_scores)`` per prompt (``[P]``
    or ``[S, P]``), every row resampled by the same ``idx``."""
    xs = np.stack([resampled_means(x, idx) for x, _ in family], axis=1)  # [rounds, rows]
    ys = np.stack([resampled_means(y, idx) for _, y in family], axis=1)
    return np.asarray([hypervolume(np.stack([xs[b], ys[b]], axis=1), ref) for b in range(idx.shape[0])])


def family_hypervolume(family: list[tuple[np.ndarray, np.ndarray]], ref: tuple[float, float]) -> float:
    """The point estimate: the hypervolume of the rows' means."""
    return hypervolume(np.asarray([[point_mean(x), point_mean(y)] for x, y in family]), ref)


def _nanmean(a: np.ndarray, axis: int) -> np.ndarray:
    """``np.nanmean`` without its warning on an all-NaN slice, which is rightly NaN here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return np.nanmean(a, axis=axis)
