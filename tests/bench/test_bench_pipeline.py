"""The pipeline benchmark: its read-back on a hand-made run directory (fast), and one real run on the tiny world."""
import json

import pytest

from divcfg.bench.common import REQUIRED_KEYS, write_results
from divcfg.bench.pipeline import LEARNER_PHASES, MODES, compare, read_run, train_args

B, G = 2, 3  # algo.batch_prompts, algo.group_size of the hand-made runs


def _fake_run(root, mode: str, step_ends: list[float], phase_s: float, wait_s: list[float], lag_max: list[float],
              generate_s: float = 0.5):
    """A run directory as train.py leaves it: saved config, summary.json and per-step scalars at given wall times."""
    from torch.utils.tensorboard import SummaryWriter
    run = root / mode
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(
        f"algo:\n  batch_prompts: {B}\n  group_size: {G}\n  max_policy_lag: 2\n"
        "actors:\n  count: 2\nreward:\n  count: 1\n")
    t0 = 1000.0  # the loop's start: step k's scalars are written step_ends[k] seconds later
    writer = SummaryWriter(str(run / "tb"))
    for k, end in enumerate(step_ends):
        wall = t0 + end
        writer.add_scalar("throughput/samples_per_s", (k + 1) * B * G / end, k, walltime=wall)
        writer.add_scalar("time/wait_rollouts", wait_s[k], k, walltime=wall)
        writer.add_scalar("rollout/policy_lag_max", lag_max[k], k, walltime=wall)
        writer.add_scalar("rollout/actor_generate_s", generate_s, k, walltime=wall)
        for phase in LEARNER_PHASES:
            writer.add_scalar(f"time/{phase}", phase_s, k, walltime=wall)
    writer.close()
    wall_s = step_ends[-1] + 0.5
    (run / "summary.json").write_text(json.dumps(dict(
        mode=mode, steps=len(step_ends), samples_per_s=len(step_ends) * B * G / wall_s, wall_s=wall_s,
        policy_lag_mean=sum(lag_max) / len(lag_max), groups_generated=len(step_ends) * B, groups_stale=0)))
    return run


def test_read_run_measures_the_window_after_warmup(tmp_path):
    # Step 0 carries 5 s of actor start-up; steps 1-3 take 1 s each.
    run = _fake_run(tmp_path, "async", [6.0, 7.0, 8.0, 9.0], phase_s=0.1, wait_s=[5.5, 0.2, 0.2, 0.2],
                    lag_max=[0, 1, 2, 1])
    r = read_run(run, warmup_steps=1)
    assert r["window_steps"] == 3 and r["window_s"] == pytest.approx(3.0)
    assert r["samples_per_s"] == pytest.approx(3 * B * G / 3.0)
    assert r["learner_busy"] == pytest.approx(3 * 4 * 0.1 / 3.0)
    assert r["wait_fraction"] == pytest.approx(0.6 / 3.0)
    assert r["actor_busy"] == pytest.approx(3 * 0.5 / (3.0 * 2))  # 0.5 actor-seconds per step, 2 actors
    assert r["first_step_s"] == pytest.approx(6.0, rel=1e-5)  # float32 scalars
    assert r["whole_run_samples_per_s"] == pytest.approx(4 * B * G / 9.5)
    assert r["whole_run_learner_busy"] == pytest.approx(4 * 4 * 0.1 / 9.5)
    assert r["policy_lag_max"] == 2 and r["max_policy_lag"] == 2
    with pytest.raises(ValueError, match="warmup_steps"):
        read_run(run, warmup_steps=4)


def test_compare_ratios_come_from_the_measured_values(tmp_path):
    runs = {"sync": [read_run(_fake_run(tmp_path, "sync", [4.0, 6.0, 8.0], 0.2, [1.5] * 3, [0, 0, 0]))],
            "async": [read_run(_fake_run(tmp_path, "async", [4.0, 5.0, 6.0], 0.2, [0.1] * 3, [0, 1, 3]))]}
    results = {r["name"]: r for r in compare(runs, "tiny")}
    sps = results["pipeline/tiny/samples_per_s"]
    assert sps["value"] == pytest.approx(B * G) and sps["baseline_value"] == pytest.approx(B * G / 2)
    assert sps["ratio"] == pytest.approx(sps["value"] / sps["baseline_value"]) and sps["met"] is True
    busy = results["pipeline/tiny/learner_busy"]
    assert busy["ratio"] == pytest.approx(busy["value"] / busy["baseline_value"])
    actor = results["pipeline/tiny/actor_busy"]
    assert actor["value"] == pytest.approx(2 * 0.5 / (2.0 * 2)) and actor["baseline_value"] == pytest.approx(2 * 0.5 / (4.0 * 2))
    assert results["pipeline/tiny/sync/policy_lag"]["met"] is True
    lag = results["pipeline/tiny/async/policy_lag"]
    assert lag["value"] == 3 and lag["target"] == 2 and lag["met"] is False
    for r in results.values():
        assert all(k in r for k in REQUIRED_KEYS), r["name"]
    doc = write_results(tmp_path / "out.json", list(results.values()))
    assert json.loads((tmp_path / "out.json").read_text())["results"] == doc["results"]


def test_both_modes_get_the_same_resources(tmp_path):
    args = {m: train_args(m, tmp_path / m, "tiny", "w", steps=5, actors=3, reward=2, beta=15.0) for m in MODES}
    differ = set(args["sync"]) ^ set(args["async"])
    assert differ == {"learner.mode=sync", "learner.mode=async", f"run.dir={tmp_path / 'sync'}",
                      f"run.dir={tmp_path / 'async'}"}
    assert {"actors.count=3", "reward.count=2", "learner.steps=5", "algo.beta=15.0"} <= set(args["sync"])


@pytest.mark.slow
@pytest.mark.ray
def test_pipeline_on_the_tiny_world(tiny_world, tmp_path):
    from divcfg.bench.pipeline import main
    out = tmp_path / "pipeline.json"
    assert main(["--world-size", "tiny", "--world-dir", str(tiny_world), "--steps", "3", "--out-dir",
                 str(tmp_path / "runs"), "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    results = {r["name"]: r for r in doc["results"]}
    assert set(results) == {"pipeline/tiny/samples_per_s", "pipeline/tiny/learner_busy", "pipeline/tiny/actor_busy",
                            "pipeline/tiny/sync/policy_lag", "pipeline/tiny/async/policy_lag"}
    sps = results["pipeline/tiny/samples_per_s"]
    assert sps["value"] > 0 and sps["ratio"] == pytest.approx(sps["value"] / sps["baseline_value"])
    assert results["pipeline/tiny/sync/policy_lag"]["value"] == 0
    assert 0 < results["pipeline/tiny/learner_busy"]["value"] <= 1
    assert 0 < results["pipeline/tiny/actor_busy"]["baseline_value"] <= 1  # sync: each step's own groups
    # Async, 2-step window: its groups may have been generated up to max_policy_lag (2) updates earlier.
    assert 0 < results["pipeline/tiny/actor_busy"]["value"] <= 3


def test_placement_compares_the_learner_group_with_the_learner_in_the_driver(tmp_path):
    args = {v: train_args(v, tmp_path / "r", "tiny", "w", steps=5, actors=2, reward=1, beta=0.0,
                          comparison="placement") for v in ("driver", "group")}
    assert set(args["driver"]) ^ set(args["group"]) == {"learner.placement=driver", "learner.placement=group"}
    assert "learner.mode=async" in args["driver"] and "learner.mode=async" in args["group"]
    runs = {"driver": [read_run(_fake_run(tmp_path / "d", "async", [4.0, 6.0, 8.0], 0.2, [1.5] * 3, [0, 1, 1]))],
            "group": [read_run(_fake_run(tmp_path / "g", "async", [4.0, 5.0, 6.0], 0.2, [0.1] * 3, [0, 1, 2]))]}
    results = {r["name"]: r for r in compare(runs, "tiny", "placement")}
    assert set(results) == {"pipeline/tiny/placement/samples_per_s", "pipeline/tiny/placement/learner_busy",
                            "pipeline/tiny/placement/actor_busy", "pipeline/tiny/placement/driver/policy_lag",
                            "pipeline/tiny/placement/group/policy_lag"}
    sps = results["pipeline/tiny/placement/samples_per_s"]
    assert sps["ratio"] == pytest.approx(2.0) and sps["target"] is None and sps["met"] is None


def test_decoder_compares_musicgen_in_divcfgs_decoder_with_transformers_own(tmp_path):
    extra = ("model=musicgen_small", "model.musicgen=/m")
    args = {v: train_args(v, tmp_path / "r", "tiny", "w", steps=5, actors=2, reward=1, beta=0.0, extra=extra,
                          comparison="decoder") for v in ("transformers", "divcfg")}
    assert set(args["transformers"]) ^ set(args["divcfg"]) == {"model.decoder=transformers", "model.decoder=divcfg"}
    assert all(set(extra) <= set(a) and "learner.mode=async" in a for a in args.values())
    runs = {"transformers": [read_run(_fake_run(tmp_path / "t", "async", [4.0, 6.0, 8.0], 0.2, [1.5] * 3, [0, 1, 1]))],
            "divcfg": [read_run(_fake_run(tmp_path / "d", "async", [4.0, 5.0, 6.0], 0.2, [0.1] * 3, [0, 1, 2]))]}
    sps = {r["name"]: r for r in compare(runs, "tiny", "decoder")}["pipeline/tiny/decoder/samples_per_s"]
    assert sps["ratio"] == pytest.approx(2.0) and sps["baseline_value"] < sps["value"]
