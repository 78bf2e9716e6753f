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
