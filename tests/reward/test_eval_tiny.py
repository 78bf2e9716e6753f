"""``divcfg eval`` with seed groups, merges and the bootstrap, on a real multirun of the tiny world. Slow."""
import json

import pytest

pytestmark = pytest.mark.slow


def test_eval_groups_with_bootstrap_writes_intervals_and_hypervolumes(tiny_world, tmp_path):
    from divcfg.cli import main
    from divcfg.reward.eval_groups import multirun_groups
    sweep = tmp_path / "sweep"
    assert main(["train", "--multirun", "world.size=tiny", f"world.dir={tiny_world}", f"run.dir={sweep}",
                 "learner.mode=local", "learner.steps=1", "algo.beta=0,5", "run.seed=0,1",
                 "logging.progress=false"]) == 0
    # jobs 0, 1 are β = 0 seeds 0, 1; jobs 2, 3 β = 5
    assert multirun_groups(sweep) == {"algo.beta=0": [str(sweep / "0" / "student"), str(sweep / "1" / "student")],
                                      "algo.beta=5": [str(sweep / "2" / "student"), str(sweep / "3" / "student")]}
    out = tmp_path / "eval"
    assert main(["eval", "--world", str(tiny_world), "--group", f"q={sweep / '0'},{sweep / '1'}",
                 "--group", f"d={sweep / '2'},{sweep / '3'}", "--gammas", "1,3", "--lams", "0,0.5,1",
                 "--prompts", "4", "--samples", "2", "--bootstrap", "200", "--out", str(out)]) == 0
    report = json.loads((out / "eval.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert list(rows) == ["base γ=1", "base γ=3", "q", "d", "merge β=5 λ=0", "merge β=5 λ=0.5", "merge β=5 λ=1"]
    assert [rows[n]["seeds"] for n in rows] == [1, 1, 2, 2, 2, 2, 2]
    for r in rows.values():
        for m in ("adherence", "diversity", "diversity_reward_embedder"):
            assert r[f"{m}_lo"] <= r[m] <= r[f"{m}_hi"], (r["name"], m)
            assert len(r["runs"][0][f"{m}_by_prompt"]) == 4
    assert rows["q"]["adherence_seed_lo"] <= rows["q"]["adherence"] <= rows["q"]["adherence_seed_hi"]
    # FAD per row against the held-out clips: one per seed with its clip-resampling interval, the mean over seeds
    for r in rows.values():
        assert r["fad"] == pytest.approx(sum(run["fad"]["fad"] for run in r["runs"]) / r["seeds"]) and r["fad"] > 0
        assert all(run["fad"]["low"] <= run["fad"]["high"] for run in r["runs"])
    assert rows["q"]["fad_seed_lo"] <= rows["q"]["fad"] <= rows["q"]["fad_seed_hi"]
    # λ = 0 and 1 are θ_q's and θ_d's weights seed by seed: the same samples, the same scores
    assert rows["merge β=5 λ=0"]["runs"] == rows["q"]["runs"] and rows["merge β=5 λ=1"]["runs"] == rows["d"]["runs"]
    assert rows["q"]["kl_end"] is not None and rows["q"]["train"][0]["steps"] == 1
    ref = report["reference_point"]
    adh = [r["adherence"] for r in rows.values()]
    assert ref["adherence"] == pytest.approx(min(adh) - 0.05 * (max(adh) - min(adh)))
    assert set(report["hypervolume"]) == {"cfg", "beta", "merge"}
    for hv in report["hypervolume"].values():
        assert hv["estimate"] >= 0 and hv["lo"] <= hv["hi"]
    for d in report["hypervolume_difference"].values():
        assert d["lo"] <= d["hi"]
    assert set(report["hypervolume_difference"]) == {"merge_minus_cfg", "beta_minus_cfg"}
    assert [c["id"] for c in report["claims"]] == [1, 2, 3, "4a", "4b", 5]
    assert all(c["verdict"] in ("holds", "fails") for c in report["claims"])
    assert {"adherence_lo", "fad"} <= set((out / "eval.csv").read_text().splitlines()[0].split(","))
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Each trained row's runs carry their reward and KL curves (one window per logged step here: 1 step)
    for name in ("q", "d"):
        for t in rows[name]["train"]:
            assert [w["first_step"] for w in t["reward_curve"]] == [0] and len(t["kl_curve"]) == 1
        assert rows[name]["train_reward_end"] == pytest.approx(
            sum(t["reward_curve"][-1]["mean"] for t in rows[name]["train"]) / 2)
    assert (out / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((out / "tb").glob("events.out.tfevents.*"))
