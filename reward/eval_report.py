"""The evaluation's statistics and outputs: rows with intervals, the families' fronts and hypervolumes, the claims.

Every interval is a paired bootstrap over prompts (one resample per round, shared by every row and family); a group
of seeds also gets a t interval over its seeds' means (``*_seed_lo``/``*_seed_hi``), which is the spread of
training runs that the prompt bootstrap does not see.
"""
from __future__ import annotations

import math

import numpy as np

from divcfg.reward import intervals as iv
from divcfg.reward.judges import INDEPENDENT_JUDGES

METRICS = ("adherence", "diversity", "diversity_reward_embedder")
JUDGE = INDEPENDENT_JUDGES["pitch"]  # Basic Pitch's adherence, in worlds that configure it (reward/pitch_judge.py)
JUDGE_METRICS = tuple(INDEPENDENT_JUDGES.values())  # one adherence column per independent judge
ADHERENCE_CLAIMS = (1, 3, "4a", "4b")  # the claims whose verdict rests on an adherence: decided by every judge
_SUFFIXES = ("", "_lo", "_hi", "_seed_lo", "_seed_hi")
COLUMNS = ["name", "kind", "guidance_scale", "lam", "beta", "seeds",
           *(f"adherence{x}" for x in _SUFFIXES), *(f"{m}{x}" for m in JUDGE_METRICS for x in _SUFFIXES),
           "diversity", "diversity_lo", "diversity_hi", "diversity_seed_lo", "diversity_seed_hi",
           "diversity_reward_embedder", "diversity_reward_embedder_lo", "diversity_reward_embedder_hi",
           "embedder_gap", "embedder_gap_lo", "embedder_gap_hi",
           "fad", "fad_seed_lo", "fad_seed_hi", "kad", "kad_seed_lo", "kad_seed_hi",
           "teacher_loglik", "forward_passes_per_token", "frames_per_s", "kl_end", "train_reward_start",
           "train_reward_end"]
FAMILIES = {"cfg": "base + CFG (γ sweep)", "beta": "β sweep (no CFG)", "merge": "merges (λ sweep)"}
GAP_FRACTION = 0.10  # claims 1 and 3: "within 10% of the γ = 1 → 3 adherence gap"
SPEEDUP = 1.8        # claim 5


def scores(row: dict, metric: str) -> np.ndarray:
    """Per-seed, per-prompt scores ``[S, P]`` of a row (None -> NaN)."""
    return np.asarray([[math.nan if v is None else v for v in run[f"{metric}_by_prompt"]] for run in row["runs"]],
                      dtype=float)


def _mean(values) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def row_stats(row: dict, idx: np.ndarray) -> dict:
    """A row's table entry: each metric's mean over seeds, its bootstrap interval and its seeds' t interval."""
    out = {k: row[k] for k in ("name", "kind", "guidance_scale", "lam", "beta", "theta_d")}
    out["seeds"] = len(row["runs"])
    for m in METRICS + tuple(j for j in JUDGE_METRICS if has_judge([row], j)):
        ci = iv.mean_interval(scores(row, m), idx)
        _, slo, shi = iv.seed_interval([run[m] for run in row["runs"]])
        out.update({m: ci["estimate"], f"{m}_lo": ci["lo"], f"{m}_hi": ci["hi"], f"{m}_seed_lo": slo,
                    f"{m}_seed_hi": shi})
    # The reward embedder's diversity minus the held-out one's, paired per prompt: a large gap flags reward hacking
    gap = iv.difference_interval(scores(row, "diversity_reward_embedder"), scores(row, "diversity"), idx)
    out.update({"embedder_gap": gap["estimate"], "embedder_gap_lo": gap["lo"], "embedder_gap_hi": gap["hi"]})
    # FAD is a figure of a whole clip set, not per prompt, so it gets no paired bootstrap: the mean over seeds, its
    # seeds' t interval, and per seed (in ``runs``) the clip-resampling interval of reward/fad.py
    fads = [run["fad"]["fad"] for run in row["runs"] if run.get("fad")]
    _, flo, fhi = iv.seed_interval(fads) if fads else (None, None, None)
    out.update({"fad": _mean(fads), "fad_seed_lo": flo, "fad_seed_hi": fhi})
    kads = [run["kad"]["kad"] for run in row["runs"] if run.get("kad")]  # the same, for KAD (reward/kad.py)
    _, klo, khi = iv.seed_interval(kads) if kads else (None, None, None)
    out.update({"kad": _mean(kads), "kad_seed_lo": klo, "kad_seed_hi": khi})
    out["teacher_loglik"] = _mean(run.get("teacher_loglik") for run in row["runs"])
    out["frames_per_s"] = _mean(run["frames_per_s"] for run in row["runs"])
    out["forward_passes_per_token"] = row["runs"][0]["forward_passes_per_token"]
    out["kl_end"] = _mean(t.get("kl_end") for t in row.get("train", []))
    # The training reward's first and last step windows (eval_groups.training_curves), averaged over seeds
    curves = [t["reward_curve"] for t in row.get("train", []) if t.get("reward_curve")]
    out["train_reward_start"] = _mean(c[0]["mean"] for c in curves)
    out["train_reward_end"] = _mean(c[-1]["mean"] for c in curves)
    out["train"] = row.get("train", [])
    out["runs"] = row["runs"]  # per seed, with the per-prompt scores a later paired comparison needs
    return out


def has_judge(rows: list[dict], metric: str = JUDGE) -> bool:
    """Whether every run of ``rows`` was also scored by the independent judge whose adherence is ``metric``."""
    return all(f"{metric}_by_prompt" in run for r in rows for run in r["runs"])


def judge_status(rows: list[dict]) -> dict[str, dict]:
    """Who decided the claims: the scorer, and each independent judge ``used`` (it scored every run), ``skipped``
    (its package is missing here, or it scored only some runs: why), ``adherence`` (the world has no scorer and
    this judge's score is the adherence itself, decided under ``scorer``) or ``absent`` (the world has no such
    judge)."""
    skipped = {}
    for r in rows:
        for run in r["runs"]:
            skipped.update(run.get("judges_skipped", {}))
    # The adherence itself: the trained scorer's, or CLAP's where the world has no scorer (Judges.adherence_by)
    by = {run.get("adherence_by", "scorer") for r in rows for run in r["runs"]}
    out = {"scorer": {"status": "used", "metric": "adherence"} if by == {"scorer"} else
           {"status": "used", "metric": "adherence", "by": by.pop()} if len(by) == 1 and None not in by else
           {"status": "absent", "metric": "adherence", "why": "the world has no scorer and no CLAP judge"}}
    for name, metric in INDEPENDENT_JUDGES.items():
        some = any(f"{metric}_by_prompt" in run for r in rows for run in r["runs"])
        if has_judge(rows, metric):
            out[name] = {"status": "used", "metric": metric}
        elif out["scorer"].get("by") == name:  # no scorer: this judge is the adherence itself, not beside it
            out[name] = {"status": "adherence", "metric": "adherence",
                         "why": "the world has no scorer, so this judge's score is the adherence (see scorer)"}
        elif name in skipped or some:
            out[name] = {"status": "skipped", "metric": metric,
                         "why": skipped.get(name, "it scored only some of the runs")}
        else:
            out[name] = {"status": "absent", "metric": metric, "why": "the world configures no such judge"}
    return out


def families(rows: list[dict]) -> dict[str, list[dict]]:
    """The fronts compared: the CFG sweep, the β sweep (groups, else single checkpoints, with a known β), merges."""
    trained = [r for r in rows if r["kind"] == "group" and r["beta"] is not None] or \
        [r for r in rows if r["kind"] == "model" and r["beta"] is not None]
    fams = {"cfg": [r for r in rows if r["kind"] == "cfg"], "beta": sorted(trained, key=lambda r: r["beta"]),
            "merge": [r for r in rows if r["kind"] == "merge"]}
    return {k: v for k, v in fams.items() if v}


def fronts(rows: list[dict], stats: list[dict], idx: np.ndarray, metric: str = "adherence") -> tuple:
    """``(reference point, each family's hypervolume, the differences against the CFG sweep)`` on ``metric`` (an
    adherence: the scorer's or a judge's) against held-out diversity; one bootstrap resample ``idx`` for all."""
    ref = iv.reference_point(np.asarray([[s[metric], s["diversity"]] for s in stats], dtype=float))
    draws, hv = {}, {}
    for name, members in families(rows).items():
        pairs = [(scores(r, metric), scores(r, "diversity")) for r in members]
        draws[name] = iv.hypervolume_draws(pairs, idx, ref)
        lo, hi = iv.percentile_interval(draws[name])
        points = np.asarray([[s[metric], s["diversity"]] for s in stats if s["name"] in
                             {r["name"] for r in members}], dtype=float)
        front = iv.pareto_front(np.asarray([[iv.point_mean(a), iv.point_mean(d)] for a, d in pairs]))
        hv[name] = {"label": FAMILIES[name], "rows": [r["name"] for r in members],
                    "front": [members[i]["name"] for i in front], "estimate": iv.family_hypervolume(pairs, ref),
                    "lo": lo, "hi": hi, "points": points.tolist()}
    diffs = {}
    for name in ("merge", "beta"):
        if name in draws and "cfg" in draws:
            lo, hi = iv.percentile_interval(draws[name] - draws["cfg"])
            diffs[f"{name}_minus_cfg"] = {"estimate": hv[name]["estimate"] - hv["cfg"]["estimate"], "lo": lo,
                                          "hi": hi}
    return ref, hv, diffs


def summarize(rows: list[dict], rounds: int, seed: int = 0) -> dict:
    """Everything ``eval.json`` holds: rows with intervals, the reference point, each family's hypervolume, the
    hypervolume differences against the CFG sweep, and the claims: by the trained scorer (``claims``) and again by
    each independent judge that scored every run (``claims_by_judge``: the claims that rest on an adherence,
    :data:`ADHERENCE_CLAIMS`, each with that judge's adherence and fronts); ``judges`` says which decided and why
    one did not, and ``verdicts`` puts every decider's verdict on each claim side by side."""
    n_prompts = len(rows[0]["runs"][0]["diversity_by_prompt"])
    idx = iv.bootstrap_indices(n_prompts, rounds, seed)
    stats = [row_stats(r, idx) for r in rows]
    status = judge_status(rows)
    scored = status["scorer"]["status"] != "absent"
    # No adherence at all (no scorer, no CLAP): no fronts, and the claims that rest on one are not measured
    ref, hv, diffs = fronts(rows, stats, idx) if scored else ((None, None), {}, {})
    by_judge, hv_by_judge = {}, {}
    for name, st in status.items():
        if name == "scorer" or st["status"] != "used":
            continue
        try:
            _, _, jdiffs = fronts(rows, stats, idx, st["metric"])
        except ValueError:  # no row's prompts asked for anything this judge reads: no fronts on its adherence
            jdiffs = {}
        hv_by_judge[name] = jdiffs
        by_judge[name] = [c for c in claims(rows, idx, jdiffs, st["metric"]) if c["id"] in ADHERENCE_CLAIMS]
    scorer = claims(rows, idx, diffs) if scored else [
        c if c["id"] not in ADHERENCE_CLAIMS else
        _claim(c["id"], c["claim"], c["statistic"], why=status["scorer"]["why"] + " (divcfg eval --clap DIR)")
        for c in claims(rows, idx, diffs)]
    verdicts = {str(c["id"]): {"scorer": c["verdict"]} for c in scorer}
    judged = [st["metric"] for n, st in status.items() if n != "scorer" and st["status"] == "used"]
    for name, cs in by_judge.items():
        for c in cs:
            verdicts[str(c["id"])][name] = c["verdict"]
    return {"bootstrap": {"rounds": rounds, "seed": seed, "prompts": n_prompts, "level": iv.LEVEL},
            "reference_point": {"adherence": ref[0], "diversity": ref[1],
                                "rule": "worst adherence and diversity among all rows, minus 5% of each span"},
            "rows": stats, "hypervolume": hv, "hypervolume_difference": diffs, "claims": scorer,
            "judges": status, "claims_by_judge": by_judge, "hypervolume_difference_by_judge": hv_by_judge,
            "verdicts": verdicts,
            "claim_3_by_theta_d": merges_by_theta_d(rows, idx, ("adherence", *judged)) if scored else []}


def _find(rows, **want):
    for r in rows:
        if all(r.get(k) == v for k, v in want.items()):
            return r
    return None


def _claim(cid, text, statistic, est=None, lo=None, hi=None, threshold=None, holds=None, why=""):
    verdict = "not measured" if holds is None else "holds" if holds else "fails"
    return {"id": cid, "claim": text, "statistic": statistic, "estimate": est, "lo": lo, "hi": hi,
            "threshold": threshold, "verdict": verdict, "note": why}


def claims(rows: list[dict], idx: np.ndarray, diffs: dict, adherence: str = "adherence") -> list[dict]:
    """The paper's headline claims (METHOD.md), each decided by its interval (the paired bootstrap over prompts).
    θ_q is the β = 0 row, θ_d the largest β's, and the merge the λ = 0.5 one towards that θ_d. ``adherence``: the
    trained scorer's (``adherence``) or an independent judge's (claims 1, 3, 4a and 4b; ``diffs`` then holds the
    hypervolume differences on that adherence)."""
    g1, g3 = _find(rows, kind="cfg", guidance_scale=1.0), _find(rows, kind="cfg", guidance_scale=3.0)
    trained = families(rows).get("beta", [])
    q = next((r for r in trained if r["beta"] == 0), None)
    d = max((r for r in trained if r["beta"] > 0), key=lambda r: r["beta"], default=None)
    half = next((r for r in rows if r["kind"] == "merge" and r["lam"] == 0.5 and
                 (d is None or r["theta_d"] in (None, d["name"]))), None)
    out = []
    gap = None if g1 is None or g3 is None else \
        iv.point_mean(scores(g3, adherence)) - iv.point_mean(scores(g1, adherence))
    bar = None if gap is None else -GAP_FRACTION * gap

    def diff(a, b, m):
        return iv.difference_interval(scores(a, m), scores(b, m), idx)

    text = "θ_q (β = 0) without CFG reaches base + CFG γ = 3 adherence: the interval lies above −10% of the gap"
    if q and g3 and gap is not None:
        c = diff(q, g3, adherence)
        out.append(_claim(1, text, f"{adherence} {q['name']} − γ=3", c["estimate"], c["lo"], c["hi"], bar,
                          c["lo"] > bar, f"gap γ=1→3 = {gap:.4f}"))
    else:
        out.append(_claim(1, text, "adherence θ_q − γ=3", why="needs γ = 1 and 3 rows and a β = 0 row"))
    text = "θ_d (the largest β) is more diverse than base + CFG at γ = 3: the interval lies above 0"
    if d and g3:
        c = diff(d, g3, "diversity")
        out.append(_claim(2, text, f"diversity {d['name']} − γ=3", c["estimate"], c["lo"], c["hi"], 0.0,
                          c["lo"] > 0))
    else:
        out.append(_claim(2, text, "diversity θ_d − γ=3", why="needs a γ = 3 row and a β > 0 row"))
    out.append(_claim_merge(half, g3, gap, bar, diff, adherence))
    for cid, name in (("4a", "merge"), ("4b", "beta")):
        text = f"the {FAMILIES[name]} front beats the CFG front: the hypervolume difference's interval lies above 0"
        c, on = diffs.get(f"{name}_minus_cfg"), "" if adherence == "adherence" else f" ({adherence} × diversity)"
        if c:
            out.append(_claim(cid, text, f"hypervolume {name} − cfg{on}", c["estimate"], c["lo"], c["hi"], 0.0,
                              c["lo"] > 0))
        else:
            out.append(_claim(cid, text, f"hypervolume {name} − cfg{on}", why=f"needs {name} and cfg rows"))
    out.append(_claim_speed(half, g3))
    return out


def _claim_merge(half, g3, gap, bar, diff, adherence: str = "adherence") -> dict:
    text = ("the λ = 0.5 merge keeps CFG-level adherence (its adherence difference against γ = 3 is not below −10% "
            "of the gap) and adds diversity (its diversity difference's interval lies above 0)")
    if not (half and g3 and gap is not None):
        return _claim(3, text, "adherence and diversity λ=0.5 − γ=3",
                      why="needs a λ = 0.5 merge and γ = 1, 3 rows")
    a, v = diff(half, g3, adherence), diff(half, g3, "diversity")
    holds = a["lo"] > bar and v["lo"] > 0
    judged = "" if adherence == "adherence" else f" ({adherence} on the bar)"  # claims_judge's claim 3 says so
    c = _claim(3, text, f"diversity {half['name']} − γ=3{judged}", v["estimate"], v["lo"], v["hi"], 0.0, holds,
               f"gap γ=1→3 = {gap:.4f}; {adherence} {half['name']} − γ=3 = {a['estimate']:.4f} "
               f"[{a['lo']:.4f}, {a['hi']:.4f}] against the bar {bar:.4f}; inside ±10% of the gap on both sides: "
               f"{bar <= a['lo'] and a['hi'] <= -bar}")
    # The verdict asks "not worse than CFG by more than 10% of the gap"; inside ±10% on both sides is recorded too
    c["adherence"] = {**a, "threshold": bar, "inside_band": bool(bar <= a["lo"] and a["hi"] <= -bar)}
    return c


def merges_by_theta_d(rows: list[dict], idx: np.ndarray, metrics: tuple[str, ...] = ("adherence",)) -> list[dict]:
    """Claim 3 for every λ = 0.5 merge, one per θ_d (the headline claim takes the largest β's), and each merge
    against the midpoint of its two ends, seed by seed (``(θ_q + θ_d) / 2`` per prompt): a merge below the midpoint
    in adherence is what a loss barrier between θ_q and θ_d would show (θ_d too far from θ_q for a linear merge).
    ``metrics``: the adherences to measure the midpoint on (the scorer's, then each judge's)."""
    g1, g3 = _find(rows, kind="cfg", guidance_scale=1.0), _find(rows, kind="cfg", guidance_scale=3.0)
    q = next((r for r in families(rows).get("beta", []) if r["beta"] == 0), None)
    by_name = {r["name"]: r for r in rows}
    if q is None or g1 is None or g3 is None:
        return []
    gap = iv.point_mean(scores(g3, "adherence")) - iv.point_mean(scores(g1, "adherence"))

    def diff(a, b, m):
        return iv.difference_interval(scores(a, m), scores(b, m), idx)

    out = []
    for half in (r for r in rows if r["kind"] == "merge" and r["lam"] == 0.5 and r["theta_d"] in by_name):
        d = by_name[half["theta_d"]]
        seeds = [run["seed"] for run in half["runs"]]

        def by_seed(row, m):  # [S, P] in the merge's seed order, so that seed s of θ_q and θ_d meet seed s's merge
            runs = {run["seed"]: run for run in row["runs"]}
            return scores({"runs": [runs[s] for s in seeds]}, m)

        midpoint = {m: iv.difference_interval(scores(half, m), (by_seed(q, m) + by_seed(d, m)) / 2, idx)
                    for m in (*metrics, "diversity")}
        out.append({"theta_d": d["name"], "beta": d["beta"], "merge": half["name"],
                    "claim": _claim_merge(half, g3, gap, -GAP_FRACTION * gap, diff), "minus_midpoint": midpoint})
    return out


def _claim_speed(half, g3) -> dict:
    text = f"the merged model generates at ≥ {SPEEDUP}× the frames/s of base + CFG γ = 3 at the same batch"
    if not (half and g3):
        return _claim(5, text, "frames/s ratio λ=0.5 / γ=3", why="needs a λ = 0.5 merge and a γ = 3 row")
    base = g3["runs"][0]["frames_per_s"]
    mean, lo, hi = iv.seed_interval([r["frames_per_s"] / base for r in half["runs"]])
    decided = lo if not math.isnan(lo) else mean
    return _claim(5, text, f"frames/s {half['name']} / γ=3", mean, None if math.isnan(lo) else lo,
                  None if math.isnan(hi) else hi, SPEEDUP, decided >= SPEEDUP,
                  "t interval over the merge's seeds (one timing each); one seed: the estimate decides")
