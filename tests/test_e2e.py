"""End-to-end runs of the real entry points on the tiny world. Slow: `make test-slow`."""
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    from divcfg.common.world_build import build_world
    root = tmp_path_factory.mktemp("world") / "tiny"
    build_world(root, "tiny", seed=0, progress=False)
    return root


def test_world_build_is_complete_and_cached(tiny_world):
    from divcfg.common.world_build import WorldError, build_world
    info = json.loads((tiny_world / "world.json").read_text())
    for key in ("adherence_cfg1", "adherence_cfg3", "diversity_cfg1", "diversity_cfg3", "embedder_recall_at_1",
                "scorer_accuracy", "codec_distinct_codes", "stage_seconds"):
        assert key in info
    assert min(info["codec_distinct_codes"]) > 1
    assert info["pretrain_loss"]["last"] < info["pretrain_loss"]["first"]
    again = build_world(tiny_world, "tiny", seed=0, progress=False)  # every stage cached
    assert again["adherence_cfg1"] == info["adherence_cfg1"]
    with pytest.raises(WorldError, match="built with .*'seed': 0.*not .*'seed': 1"):
        build_world(tiny_world, "tiny", seed=1, progress=False)


def _tags(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tags = set()
    for events in (run_dir / "tb").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags


@pytest.mark.ray
def test_train_on_ray_async(tiny_world, tmp_path):
    from divcfg.cli import main
    run = tmp_path / "run"
    assert main(["train", "world.size=tiny", f"world.dir={tiny_world}", f"run.dir={run}", "learner.steps=3",
                 "algo.beta=5", "actors.count=2", "reward.count=1", "logging.progress=false"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["samples"] == 3 * 4 * 4
    assert summary["groups_generated"] == summary["groups_used"] + summary["groups_stale"] + summary["groups_dropped"]
    tags = _tags(run)
    for tag in ("throughput/samples_per_s", "throughput/tokens_per_s", "losses/distill_kl", "losses/pg",
                "losses/total", "losses/grad_norm", "rewards/diversity_mean", "rollout/policy_lag_mean",
                "rollout/groups_stale", "rollout/actors", "time/teacher", "time/publish", "system/rss_mb"):
        assert tag in tags, tag


def test_train_local_and_resume(tiny_world, tmp_path):
    from divcfg.cli import main
    run = tmp_path / "run"
    args = ["train", "world.size=tiny", f"world.dir={tiny_world}", "learner.mode=local", "logging.progress=false",
            "checkpoint.every=1"]
    assert main(args + [f"run.dir={run}", "learner.steps=2"]) == 0
    assert main(args + [f"run.dir={tmp_path / 'run2'}", f"run.resume={run}", "learner.steps=4"]) == 0
    ckpts = sorted(p.name for p in (tmp_path / "run2" / "checkpoints").glob("step_*"))
    assert ckpts[-1] == "step_000004"
    import torch
    state = torch.load(tmp_path / "run2" / "checkpoints" / "step_000004" / "train_state.pt", weights_only=False)
    assert state["version"] == 4 and state["stream_position"] == 4 * 4


def test_train_bad_inputs(tiny_world, tmp_path, capsys):
    from divcfg.cli import main
    base = ["train", "world.size=tiny", f"world.dir={tiny_world}", f"run.dir={tmp_path / 'r'}", "learner.mode=local"]
    assert main(base + ["algo.beta=-1"]) == 2
    assert "algo.beta=-1.0: must be >= 0" in capsys.readouterr().err
    assert main(base + ["algo.beta=5", "algo.group_size=1"]) == 2
    assert "algo.group_size=1: must be >= 2 when algo.beta=5.0" in capsys.readouterr().err
    assert main(base + ["algo.guidance_scale=0.5"]) == 2
    assert "the CFG teacher needs" in capsys.readouterr().err
    assert main(base + [f"run.resume={tmp_path / 'nope'}"]) == 2
    assert "no such run directory" in capsys.readouterr().err
    assert main(base + ["algo.nonsense=1"]) != 0


def test_eval_merge_and_sample_on_tiny_checkpoints(tiny_world, tmp_path):
    import wave

    from divcfg.cli import main
    base = tiny_world / "base"
    run = tmp_path / "run"
    assert main(["train", "world.size=tiny", f"world.dir={tiny_world}", f"run.dir={run}", "learner.mode=local",
                 "learner.steps=2", "logging.progress=false"]) == 0
    assert main(["merge", str(base), str(run / "student"), "--lam", "0.5", "--out", str(tmp_path / "merged")]) == 0
    out = tmp_path / "eval"
    assert main(["eval", str(run / "student"), str(tmp_path / "merged"), "--world", str(tiny_world), "--gammas",
                 "1,3", "--merge", str(base), str(run / "student"), "--lams", "0,1", "--prompts", "2",
                 "--samples", "4", "--out", str(out)]) == 0
    rows = json.loads((out / "eval.json").read_text())["rows"]
    assert [r["kind"] for r in rows] == ["cfg", "cfg", "model", "model", "merge", "merge"]
    assert [r["forward_passes_per_token"] for r in rows[:3]] == [1, 2, 1]
    assert (out / "eval.csv").read_text().startswith("name,kind,guidance_scale")
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image as mpimg
    assert mpimg.imread(out / "pareto.png").shape[2] in (3, 4)
    # λ = 0 of (base, student) is the base model: same samples, same scores as base without CFG.
    assert rows[4]["adherence"] == pytest.approx(rows[0]["adherence"]) and rows[4]["diversity"] == pytest.approx(rows[0]["diversity"])
    assert main(["sample", str(tmp_path / "merged"), "--prompt", "a fast melody", "--n", "2", "--out",
                 str(tmp_path / "wav")]) == 0
    for name in ("p000_s00.wav", "p000_s01.wav"):
        with wave.open(str(tmp_path / "wav" / name)) as w:
            assert w.getnframes() > 0


def test_heldout_embedder_is_not_the_reward_embedder(tiny_world):
    import torch

    from divcfg.reward.judges import Judges
    judges = Judges.load(tiny_world)
    wav = torch.randn(2, 16000) * 0.1
    assert not torch.allclose(judges.embed(wav, "reward"), judges.embed(wav, "eval"))
