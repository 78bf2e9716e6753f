"""The batch-sweep benchmark (claim 5 at each mode's best batch): its arithmetic by hand, and a tiny random policy
through the real entry point, from a preset, a checkpoint and a world's base model."""
import json
import math

import numpy as np
import pytest

from divcfg.bench.batch_sweep import main, run, summarize
from divcfg.bench.common import REQUIRED_KEYS


def test_bests_and_their_ratio_by_hand():
    # 10 frames a clip; seconds per repeat. No CFG is fastest at batch 4, CFG at batch 2.
    seconds = {(2, "nocfg"): [1.0, 1.0], (2, "cfg"): [2.0, 2.5], (4, "nocfg"): [1.0, 2.0], (4, "cfg"): [5.0, 5.0]}
    out = {r["name"]: r for r in summarize(seconds, 10, "p", {})}
    assert out["batch_sweep/p/b4/nocfg"]["value"] == 30.0  # median of 40 and 20 frames/s
    assert out["batch_sweep/p/b2/cfg"]["value"] == 9.0 and out["batch_sweep/p/b2/cfg"]["baseline_value"] == 20.0
    assert out["batch_sweep/p/b2/cfg"]["forward_passes_per_token"] == 2
    assert out["batch_sweep/p/b2/cfg"]["rows_per_forward"] == 4
    assert out["batch_sweep/p/best/nocfg"]["batch"] == 4 and out["batch_sweep/p/best/cfg"]["batch"] == 2
    speed = out["batch_sweep/p/speedup"]
    assert speed["value"] == pytest.approx(30.0 / 9.0)
    # per repeat: the best of each mode over the batches (repeat 1: 40 / 10, repeat 2: 20 / 8)
    assert speed["per_repeat"] == pytest.approx([4.0, 2.5])
    half = 12.706 * np.std([4.0, 2.5], ddof=1) / math.sqrt(2)
    assert speed["lo"] == pytest.approx(3.25 - half) and speed["hi"] == pytest.approx(3.25 + half)
    assert speed["met"] is False and speed["target"] == 1.8  # the interval reaches below 1.8
    assert speed["forward_passes_per_token"] == {"nocfg": 1, "cfg": 2}
    steady = summarize({(2, "nocfg"): [1.0, 1.0], (2, "cfg"): [2.0, 2.0]}, 10, "p", {})
    assert steady[-1]["value"] == 2.0 and steady[-1]["lo"] == steady[-1]["hi"] == 2.0 and steady[-1]["met"] is True


def test_a_tiny_policy_sweep_through_the_entry_point(tmp_path, capsys):
    results = run(preset="tiny", batches=(1, 2), frames=4, repeats=2, verbose=False)
    names = [r["name"] for r in results]
    assert names == [f"batch_sweep/tiny/b{b}/{m}" for b in (1, 2) for m in ("nocfg", "cfg")] + [
        "batch_sweep/tiny/best/nocfg", "batch_sweep/tiny/best/cfg", "batch_sweep/tiny/speedup"]
    for r in results:
        assert all(k in r for k in REQUIRED_KEYS) and math.isfinite(r["value"]) and r["value"] > 0, r
    sweep = results[:4]  # the (batch, mode) entries
    assert all(len(r["all_frames_per_s"]) == 2 for r in sweep)
    assert [r["forward_passes_per_token"] for r in sweep] == [1, 2, 1, 2]
    out = tmp_path / "sweep.json"
    assert main(["--preset", "tiny", "--batches", "1,2", "--frames", "4", "--repeats", "1", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["machine"]["subject"] == "tiny" and doc["results"][-1]["name"] == "batch_sweep/tiny/speedup"
    assert doc["results"][-1]["lo"] is None  # one repeat: no interval, the estimate decides
    assert "batch_sweep/tiny/speedup" in capsys.readouterr().out


def test_a_world_uses_its_base_model_prompts_and_clip_length(tmp_path, capsys):
    from divcfg.bench.run import BENCHMARKS
    from divcfg.common.data.tokens import write_tokens
    from divcfg.model.loaders import save_policy
    from divcfg.model.policy import build_policy
    assert BENCHMARKS["batch-sweep"][0] == "divcfg.bench.batch_sweep"
    world = tmp_path / "w"
    policy = build_policy(seed=0)
    save_policy(policy, world / "base")
    (world / "prompts_heldout.txt").write_text("a slow tune\na fast tune\n")
    k = policy.cfg.n_codebooks
    write_tokens(world / "heldout.parquet", ["a slow tune"], np.zeros((1, k, 3), np.int64),
                 {"codec": "codec", "card": policy.cfg.card, "sample_rate": 16000, "frame_rate": 50})
    results = run(world=str(world), batches=(1,), repeats=1, verbose=False)
    assert results[0]["name"] == "batch_sweep/base/b1/nocfg" and results[0]["frames"] == 3
    assert main(["--world", str(tmp_path / "none")]) == 2
    assert "no base model there" in capsys.readouterr().err
    assert main(["--preset", "tiny", "--world", str(world)]) == 2
    assert "give one of" in capsys.readouterr().err
    # a checkpoint is timed at its own max_frames unless told
    assert run(checkpoint=str(world / "base"), batches=(1,), frames=2, repeats=1, verbose=False)[0]["frames"] == 2
