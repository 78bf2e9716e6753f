"""The claim-4a A/B (experiments/merge_front.py) against the evaluation's own fronts: with every λ it gives eval's
merge − CFG hypervolume and interval exactly; a subset of the merges never covers more; a λ not measured is refused."""
import json

import numpy as np
import pytest

from divcfg.experiments.merge_front import main, merge_front_ab
from divcfg.reward.eval_report import summarize

RNG = np.random.default_rng(7)


def _row(name, kind, adherence, diversity, **kw):
    runs = []
    for s in range(1 if kind == "cfg" else 2):
        a, d = adherence + RNG.normal(0, 0.02, 30), diversity + RNG.normal(0, 0.02, 30)
        j = a - 0.1 + RNG.normal(0, 0.02, 30)
        runs.append({"seed": s, "adherence": float(a.mean()), "diversity": float(d.mean()),
                     "diversity_reward_embedder": float(d.mean()), "frames_per_s": 1000.0,
                     "forward_passes_per_token": 1, "adherence_by_prompt": a.tolist(),
                     "diversity_by_prompt": d.tolist(), "diversity_reward_embedder_by_prompt": d.tolist(),
                     "adherence_judge": float(j.mean()), "adherence_judge_by_prompt": j.tolist()})
    base = {"guidance_scale": 1.0, "lam": None, "beta": None, "theta_d": None}
    return {"name": name, "kind": kind, **{**base, **kw}, "runs": runs, "train": []}


def _report():
    rows = [_row("base γ=1", "cfg", 0.40, 0.75), _row("base γ=3", "cfg", 0.56, 0.55, guidance_scale=3.0),
            _row("q", "group", 0.555, 0.54, beta=0.0), _row("d", "group", 0.50, 0.72, beta=15.0)]
    # The merge path bows above the straight line between q and d: λ = 0.25 and 0.75 add area λ = 0.5 can't
    for lam, (a, d) in {0.25: (0.553, 0.62), 0.5: (0.54, 0.66), 0.75: (0.525, 0.70)}.items():
        rows.append(_row(f"merge β=15 λ={lam}", "merge", a, d, lam=lam, beta=15.0, theta_d="d"))
    return summarize(rows, 300)


def test_every_lambda_is_the_evaluations_own_figure_and_a_subset_covers_no_more():
    report = json.loads(json.dumps(_report()))  # as eval.json holds it
    half, full = merge_front_ab(report, [(0.5,), (0.25, 0.5, 0.75)])
    want = report["hypervolume_difference"]["merge_minus_cfg"]
    assert full["merge_minus_cfg"] == pytest.approx(want["estimate"], abs=1e-12)
    assert (full["lo"], full["hi"]) == pytest.approx((want["lo"], want["hi"]), abs=1e-12)
    assert full["rows"] == ["merge β=15 λ=0.25", "merge β=15 λ=0.5", "merge β=15 λ=0.75"]
    # Adding points to a front can only add area, in the estimate and in every bootstrap round (so lo >= 0)
    change = full["change_vs_first"]
    assert change["estimate"] > 0 and change["lo"] >= 0 and "change_vs_first" not in half
    assert change["estimate"] == pytest.approx(full["merge_minus_cfg"] - half["merge_minus_cfg"])
    # A judge's fronts are its own: the same figures as eval's by-judge differences
    judged = merge_front_ab(report, [(0.25, 0.5, 0.75)], "adherence_judge")[0]
    assert judged["merge_minus_cfg"] == pytest.approx(
        report["hypervolume_difference_by_judge"]["pitch"]["merge_minus_cfg"]["estimate"], abs=1e-12)


def test_a_lambda_the_report_did_not_measure_is_refused_by_name(tmp_path, capsys):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(_report()))
    assert main([str(path), "--lams", "0.5", "--lams", "0.5,0.9"]) == 2
    err = capsys.readouterr().err
    assert "λ = 0.9" in err and "[0.25, 0.5, 0.75]" in err and str(path) in err
    assert main([str(path), "--lams", "0.5", "--lams", "0.25,0.5,0.75", "--out", str(tmp_path / "ab.json")]) == 0
    assert "pitch" in capsys.readouterr().out
    saved = json.loads((tmp_path / "ab.json").read_text())
    assert set(saved["by_decider"]) == {"scorer", "pitch"}


def test_a_broken_or_foreign_report_is_refused_by_path(tmp_path, capsys):
    broken, foreign = tmp_path / "broken.json", tmp_path / "foreign.json"
    broken.write_text(json.dumps(_report())[:200])
    foreign.write_text(json.dumps({"steps": 500}))  # a job's summary.json, say
    for path, why in ((broken, "not JSON"), (foreign, "no 'rows'")):
        assert main([str(path), "--lams", "0.5", "--lams", "0.25,0.5"]) == 2
        err = capsys.readouterr().err
        assert str(path) in err and why in err, err
