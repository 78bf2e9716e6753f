"""``divcfg eval``'s checkpoint groups, multirun grouping, bad input, and its report on hand-made measurements."""
import json
import math

import numpy as np
import pytest
from omegaconf import OmegaConf

from divcfg.model.loaders import save_policy
from divcfg.model.policy import build_policy
from divcfg.reward.eval_groups import check_group, multirun_groups, parse_group, resolve_checkpoint


def _run(root, *, seed, beta, world, overrides=None, **arch):
    """A run directory as `divcfg train` leaves it: .hydra/config.yaml (+ overrides.yaml), student/, summary.json."""
    (root / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"run": {"seed": seed}, "algo": {"beta": beta}}), root / ".hydra" / "config.yaml")
    if overrides is not None:
        OmegaConf.save(OmegaConf.create(overrides), root / ".hydra" / "overrides.yaml")
    save_policy(build_policy(seed=seed + 1000 * int(beta), **arch), root / "student",
                meta={"codec": str(world / "codec"), "beta": beta, "steps": 1})
    (root / "summary.json").write_text(json.dumps({"kl_end": 0.01 * (seed + 1), "wall_s": 5.0, "world": str(world)}))
    return root


def test_resolve_checkpoint_reads_the_run_beside_it(tmp_path):
    run = _run(tmp_path / "r", seed=2, beta=15.0, world=tmp_path / "w")
    for path in (run, run / "student"):
        c = resolve_checkpoint(path)
        assert (c.path, c.seed, c.beta, c.world) == (run / "student", 2, 15.0, str((tmp_path / "w").resolve()))
        assert c.train == {"kl_end": 0.03, "wall_s": 5.0}
    with pytest.raises(FileNotFoundError, match="no policy checkpoint there"):
        resolve_checkpoint(tmp_path / "nothing")


def test_parse_group():
    assert parse_group("beta15=a/student,b/student") == ("beta15", ["a/student", "b/student"])
    for bad in ("beta15", "=a,b", "beta15="):
        with pytest.raises(ValueError, match="expected NAME=CKPT,CKPT"):
            parse_group(bad)


def test_multirun_jobs_are_grouped_by_overrides_less_the_seed(tmp_path):
    w = tmp_path / "w"
    for job, (beta, seed) in enumerate([(0, 0), (0, 1), (15, 0), (15, 1)]):
        _run(tmp_path / "mr" / str(job), seed=seed, beta=float(beta), world=w,
             overrides=["world.size=small", f"algo.beta={beta}", f"run.seed={seed}", "run.dir=runs/x",
                        "logging.progress=False"])
    groups = multirun_groups(tmp_path / "mr")
    assert groups == {"algo.beta=0": [str(tmp_path / "mr" / "0" / "student"), str(tmp_path / "mr" / "1" / "student")],
                      "algo.beta=15": [str(tmp_path / "mr" / "2" / "student"), str(tmp_path / "mr" / "3" / "student")]}
    (tmp_path / "mr" / "4" / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(["algo.beta=5"]), tmp_path / "mr" / "4" / ".hydra" / "overrides.yaml")
    with pytest.raises(FileNotFoundError, match="job 4 has no student/ checkpoint"):
        multirun_groups(tmp_path / "mr")
    with pytest.raises(FileNotFoundError, match="no job directories"):
        multirun_groups(tmp_path / "w")


def test_a_group_from_different_worlds_or_base_models_is_refused(tmp_path):
    w, other = tmp_path / "w", tmp_path / "other"
    a = resolve_checkpoint(_run(tmp_path / "a", seed=0, beta=0.0, world=w))
    b = resolve_checkpoint(_run(tmp_path / "b", seed=1, beta=0.0, world=other))
    c = resolve_checkpoint(_run(tmp_path / "c", seed=1, beta=0.0, world=w, dim=48))
    d = resolve_checkpoint(_run(tmp_path / "d", seed=1, beta=15.0, world=w))
    e = resolve_checkpoint(_run(tmp_path / "e", seed=0, beta=0.0, world=w))
    check_group("q", [a, resolve_checkpoint(_run(tmp_path / "f", seed=1, beta=0.0, world=w))], w)
    with pytest.raises(ValueError, match=f"--group q: .*b/student was trained on the world {other.resolve()}"):
        check_group("q", [a, b], w)
    with pytest.raises(ValueError, match="--group q: .* are different base models"):
        check_group("q", [a, c], w)
    with pytest.raises(ValueError, match="has β=0.0 and .* β=15.0"):
        check_group("q", [a, d], w)
    with pytest.raises(ValueError, match=r"seeds \[0, 0\] repeat"):
        check_group("q", [a, e], w)
    with pytest.raises(ValueError, match=f"not --world {other.resolve()}"):
        check_group("q", [a], other)


def test_cli_refuses_bad_groups_and_bootstrap_before_any_work(tmp_path, capsys):
    from divcfg.reward.evaluate import main
    w = tmp_path / "w"  # not even a world: the refusals come before anything is loaded
    a, b = _run(tmp_path / "a", seed=0, beta=0.0, world=w), _run(tmp_path / "b", seed=1, beta=0.0, world=tmp_path)
    assert main(["--world", str(w), "--group", f"q={a},{b}", "--out", str(tmp_path / "o")]) == 2
    assert f"--group q: {b / 'student'} was trained on the world {tmp_path.resolve()}" in capsys.readouterr().err
    assert main(["--world", str(w), "--bootstrap", "99", "--out", str(tmp_path / "o")]) == 2
    assert "--bootstrap=99: a bootstrap needs >= 100 rounds" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _row(name, kind, adherence, diversity, gamma=1.0, lam=None, beta=None, theta_d=None, fps=2000.0):
    """A measured row: one run per seed, the per-prompt scores given as [S, P] arrays."""
    adherence, diversity = np.atleast_2d(adherence), np.atleast_2d(diversity)
    runs = [{"seed": s, "adherence": float(np.mean(a)), "diversity": float(np.mean(d)),
             "diversity_reward_embedder": float(np.mean(d)) + 0.01, "frames_per_s": fps,
             "forward_passes_per_token": 2 if gamma != 1.0 else 1, "teacher_loglik": -2.0,
             "adherence_by_prompt": a.tolist(), "diversity_by_prompt": d.tolist(),
             "diversity_reward_embedder_by_prompt": (d + 0.01).tolist()}
            for s, (a, d) in enumerate(zip(adherence, diversity))]
    return {"name": name, "kind": kind, "guidance_scale": gamma, "lam": lam, "beta": beta, "theta_d": theta_d,
            "runs": runs, "train": []}


def test_report_decides_the_claims_by_their_intervals(tmp_path):
    from divcfg.reward.eval_outputs import write_outputs
    from divcfg.reward.eval_report import summarize
    from divcfg.reward.intervals import hypervolume
    rng = np.random.default_rng(0)
    noise = lambda s=1: rng.normal(0, 0.01, size=(s, 40))  # noqa: E731
    rows = [_row("base γ=1", "cfg", 0.40 + noise(), 0.76 + noise()),
            _row("base γ=3", "cfg", 0.56 + noise(), 0.55 + noise(), gamma=3.0, fps=1000.0),
            _row("q", "group", 0.56 + noise(2), 0.53 + noise(2), beta=0.0),
            _row("d", "group", 0.45 + noise(2), 0.80 + noise(2), beta=15.0),
            _row("merge β=15 λ=0.5", "merge", 0.555 + noise(2), 0.70 + noise(2), lam=0.5, beta=15.0, theta_d="d")]
    report = summarize(rows, 200, seed=0)
    by_id = {c["id"]: c for c in report["claims"]}
    # 1: q − γ=3 ≈ 0 with a tight interval, far above −10% of the 0.16 gap
    assert by_id[1]["verdict"] == "holds" and by_id[1]["threshold"] == pytest.approx(-0.016, abs=0.002)
    assert by_id[2]["verdict"] == "holds" and by_id[2]["estimate"] == pytest.approx(0.25, abs=0.01)
    assert by_id[3]["verdict"] == "holds" and by_id[3]["adherence"]["estimate"] == pytest.approx(-0.005, abs=0.005)
    assert by_id[5]["verdict"] == "holds" and by_id[5]["estimate"] == pytest.approx(2.0)
    ref = report["reference_point"]
    assert ref["adherence"] == pytest.approx(min(r["adherence"] for r in report["rows"]) - 0.05 * 0.16, abs=0.002)
    cfg_points = [[r["adherence"], r["diversity"]] for r in report["rows"] if r["kind"] == "cfg"]
    hv = report["hypervolume"]
    ref_point = (ref["adherence"], ref["diversity"])
    assert hv["cfg"]["estimate"] == pytest.approx(hypervolume(np.array(cfg_points), ref_point))
    assert hv["cfg"]["lo"] <= hv["cfg"]["estimate"] <= hv["cfg"]["hi"]
    # the merge and β fronts dominate more than the CFG front: (0.555, 0.70) and (0.45, 0.80) beat the γ points
    assert by_id["4a"]["verdict"] == "holds" and by_id["4b"]["verdict"] == "holds"
    q = next(r for r in report["rows"] if r["name"] == "q")
    assert q["seeds"] == 2 and not math.isnan(q["adherence_seed_lo"])
    assert q["embedder_gap"] == pytest.approx(0.01)
    write_outputs(report, tmp_path)
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["reference_point"]["diversity"] == pytest.approx(ref["diversity"])
    assert saved["hypervolume_difference"]["merge_minus_cfg"]["lo"] > 0
    assert (tmp_path / "eval.csv").read_text().splitlines()[0].startswith("name,kind,guidance_scale,lam,beta,seeds,"
                                                                         "adherence,adherence_lo,adherence_hi")
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_claim_fails_when_its_interval_straddles_the_bar():
    from divcfg.reward.eval_report import summarize
    rng = np.random.default_rng(1)
    rows = [_row("base γ=1", "cfg", 0.40 + rng.normal(0, 0.01, (1, 40)), 0.76 + rng.normal(0, 0.01, (1, 40))),
            _row("base γ=3", "cfg", 0.56 + rng.normal(0, 0.01, (1, 40)), 0.55 + rng.normal(0, 0.2, (1, 40)),
                 gamma=3.0),
            # more diverse on average by 0.02, with per-prompt noise 0.2: the interval straddles 0
            _row("d", "group", 0.45 + rng.normal(0, 0.01, (1, 40)), 0.57 + rng.normal(0, 0.2, (1, 40)), beta=15.0)]
    claim2 = next(c for c in summarize(rows, 200)["claims"] if c["id"] == 2)
    assert claim2["lo"] < 0 < claim2["hi"] and claim2["verdict"] == "fails"
    claim1 = next(c for c in summarize(rows, 200)["claims"] if c["id"] == 1)
    assert claim1["verdict"] == "not measured"


def test_the_independent_judge_decides_the_adherence_claims_by_its_own_adherence():
    from divcfg.reward.eval_report import summarize
    rng = np.random.default_rng(2)
    noise = lambda s=1: rng.normal(0, 0.01, size=(s, 40))  # noqa: E731
    rows = [_row("base γ=1", "cfg", 0.40 + noise(), 0.76 + noise()),
            _row("base γ=3", "cfg", 0.56 + noise(), 0.55 + noise(), gamma=3.0),
            _row("q", "group", 0.56 + noise(2), 0.53 + noise(2), beta=0.0),
            _row("d", "group", 0.45 + noise(2), 0.80 + noise(2), beta=15.0),
            _row("merge β=15 λ=0.5", "merge", 0.555 + noise(2), 0.70 + noise(2), lam=0.5, beta=15.0, theta_d="d")]
    assert summarize(rows, 200)["claims_by_judge"] == {}  # no judge in these runs: nothing to decide
    # The judge hears γ = 3 well above γ = 1 (gap 0.2) but q and the merge far below γ = 3 (−0.1 < −10% of the gap).
    judge = {"base γ=1": 0.5, "base γ=3": 0.7, "q": 0.6, "d": 0.5, "merge β=15 λ=0.5": 0.6}
    for r in rows:
        for run in r["runs"]:
            by = judge[r["name"]] + rng.normal(0, 0.01, 40)
            run["adherence_judge"], run["adherence_judge_by_prompt"] = float(by.mean()), by.tolist()
    report = summarize(rows, 200)
    scorer = {c["id"]: c["verdict"] for c in report["claims"]}
    heard = {c["id"]: c for c in report["claims_by_judge"]["pitch"]}
    assert scorer[1] == scorer[3] == "holds" and set(heard) == {1, 3, "4a", "4b"}
    assert heard[1]["verdict"] == heard[3]["verdict"] == "fails"
    assert heard[1]["estimate"] == pytest.approx(-0.1, abs=0.01) and heard[1]["threshold"] == pytest.approx(-0.02,
                                                                                                           abs=0.003)
    q = next(r for r in report["rows"] if r["name"] == "q")
    assert q["adherence_judge"] == pytest.approx(0.6, abs=0.01) and q["adherence_judge_lo"] < q["adherence_judge"]


def test_a_relative_codec_path_is_relative_to_the_checkpoint(tmp_path):
    """The world's base model names its codec as ../codec: its world is the directory above it."""
    save_policy(build_policy(seed=0), tmp_path / "world" / "base", meta={"codec": "../codec"})
    assert resolve_checkpoint(tmp_path / "world" / "base").world == str((tmp_path / "world").resolve())


def test_merges_pair_theta_q_with_each_theta_d_seed_by_seed(tmp_path):
    from divcfg.reward.evaluate import plan_rows
    w = tmp_path / "w"
    runs = {(b, s): _run(tmp_path / f"b{b}_s{s}", seed=s, beta=float(b), world=w) for b in (0, 5, 15) for s in (0, 1)}
    groups = {f"β={b}": [str(runs[b, 0]), str(runs[b, 1])] for b in (0, 5, 15)}

    def plan(merge_with=None, lams=(0.0, 0.5, 1.0), groups=groups):
        return plan_rows(w, lambda: None, [1.0, 3.0], [], None, list(lams), groups, merge_with)
    names = [p.name for p in plan()]
    assert names == ["base γ=1", "base γ=3", "β=0", "β=5", "β=15", "merge β=5 λ=0", "merge β=5 λ=0.5",
                     "merge β=5 λ=1", "merge β=15 λ=0", "merge β=15 λ=0.5", "merge β=15 λ=1"]
    rows = {p.name: p for p in plan()}
    # λ = 0 reuses θ_q's measurement and λ = 1 θ_d's, seed by seed; λ = 0.5 merges seed s with seed s
    assert [k for _, k, _ in rows["merge β=15 λ=0"].members] == [k for _, k, _ in rows["β=0"].members]
    assert [k for _, k, _ in rows["merge β=15 λ=1"].members] == [k for _, k, _ in rows["β=15"].members]
    assert [k for _, k, _ in rows["merge β=15 λ=0.5"].members] == [
        ("merge", str(runs[0, s] / "student"), str(runs[15, s] / "student"), 0.5) for s in (0, 1)]
    assert [p.name for p in plan(["β=15"], lams=[0.5])][-1:] == ["merge β=15 λ=0.5"]
    assert not [p for p in plan([]) if p.kind == "merge"]
    with pytest.raises(ValueError, match=r"--merge-with \['β=0'\]: not a β > 0 group"):
        plan(["β=0"])
    lopsided = {**groups, "β=15": [str(runs[15, 0])]}
    with pytest.raises(ValueError, match=r"--group β=15 has seeds \[0\] and θ_q \(β=0\) \[0, 1\]"):
        plan(groups=lopsided)
    # the merged policy is the interpolation of the two seeds' weights
    import torch

    from divcfg.common.storage.checkpoint import load_weights
    merged = rows["merge β=15 λ=0.5"].members[1][2]().state_dict()
    qa, _, _ = load_weights(runs[0, 1] / "student")
    da, _, _ = load_weights(runs[15, 1] / "student")
    name = next(k for k, v in qa.items() if v.is_floating_point() and not torch.equal(v, da[k]))
    assert torch.allclose(merged[name], 0.5 * (qa[name] + da[name]), atol=1e-6)
