"""Fast checks of the learner benchmark on the tiny policy with a short batch."""
import json
import math

import numpy as np
import pytest

from divcfg.bench.common import REQUIRED_KEYS
from divcfg.bench.learner import PHASES, TARGET_FORWARD_EQUIVALENTS, main, run, synthetic_batch, world_policy_config
from divcfg.bench.run import main as bench_main
from divcfg.model.policy import build_policy


def test_world_policy_config_matches_the_small_world():
    cfg = world_policy_config("small")
    assert (cfg.dim, cfg.n_layers, cfg.n_heads, cfg.text_layers) == (128, 4, 4, 2)
    assert (cfg.n_codebooks, cfg.card, cfg.max_frames) == (4, 256, 75)


def test_synthetic_batch_is_whole_groups_with_rewards():
    batch = synthetic_batch(build_policy(world_policy_config("tiny"), seed=0), 3, 2, frames=4)
    assert batch.codes.shape == (6, 4, 4) and list(batch.group_id) == [0, 0, 1, 1, 2, 2]
    assert np.isfinite(batch.diversity_reward).all() and np.isfinite(batch.logprobs).all()


def test_run_entries_are_computed_from_the_measured_times():
    results = run(presets=("tiny",), batch_prompts=2, group_size=2, betas=(0.0, 15.0), frames=4, repeats=1,
                  warmup=0)
    assert [r["name"] for r in results] == ["learner/tiny/b2g2/beta0", "learner/tiny/b2g2/beta15"]
    for r in results:
        for key in REQUIRED_KEYS:
            assert key in r, (r["name"], key)
        assert r["value"] > 0 and r["baseline_value"] > 0
        assert r["ratio"] == pytest.approx(r["value"] / r["baseline_value"])
        assert r["target"] == TARGET_FORWARD_EQUIVALENTS and r["met"] == (r["ratio"] <= TARGET_FORWARD_EQUIVALENTS)
        assert r["tokens"] == 2 * 2 * 4 * 4 and r["tokens_per_s"] == pytest.approx(r["tokens"] / r["value"])
        assert r["value"] == r["step_all_s"][0] and r["baseline_value"] == r["forward_all_s"][0]  # one repeat
        assert all(math.isfinite(r[f"{k}_s"]) and r[f"{k}_s"] > 0 for k in PHASES)


def test_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "learner.json"
    assert main(["--preset", "tiny", "--batch-prompts", "1", "--group-size", "2", "--betas", "15", "--frames", "4",
                 "--repeats", "1", "--warmup", "0", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert set(doc) == {"machine", "date", "results"}
    assert [r["name"] for r in doc["results"]] == ["learner/tiny/b1g2/beta15"]
    assert "forward-equivalents" in capsys.readouterr().out


def test_registry_lists_the_new_benchmarks(capsys):
    assert bench_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "learner" in out and "pipeline" in out


def test_workers_entries_compare_each_group_size_with_one_worker(tmp_path):
    """--workers 1,2: two gloo processes; each entry's ratio is the one-worker update time over its own."""
    from divcfg.bench.learner import TARGET_SPEEDUP_PER_WORKER
    out = tmp_path / "workers.json"
    assert main(["--workers", "2", "--preset", "tiny", "--batch-prompts", "3", "--group-size", "2", "--betas", "15",
                 "--frames", "4", "--repeats", "2", "--warmup", "0", "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert [r["name"] for r in results] == ["learner/tiny/b3g2/beta15/workers1", "learner/tiny/b3g2/beta15/workers2"]
    one = results[0]["value"]
    for r, n in zip(results, (1, 2)):
        assert r["value"] == pytest.approx(float(np.median(r["step_all_s"]))) and len(r["step_all_s"]) == 2
        assert r["baseline_value"] == one and r["ratio"] == pytest.approx(one / r["value"])
        assert r["samples_per_s"] == pytest.approx(6 / r["value"])
        assert r["updates_per_s"] == pytest.approx(1 / r["value"])
        assert r["target"] == TARGET_SPEEDUP_PER_WORKER * n and r["met"] == (r["ratio"] >= r["target"])
