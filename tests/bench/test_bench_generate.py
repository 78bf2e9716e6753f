"""Fast checks of the generation benchmark's plumbing (no peer, tiny sizes)."""
import json
import math

from divcfg.bench.common import REQUIRED_KEYS, median_time, print_table, write_results
from divcfg.bench.generate import main, run


def test_run_tiny_entries_have_required_keys_and_positive_values(capsys):
    results = run(presets=("tiny",), batches=(1,), frames=8, repeats=1, include_peer=False)
    names = [r["name"] for r in results]
    assert names == ["generate/tiny/b1/nocfg", "generate/tiny/b1/cfg", "cfg_cost/tiny/b1"]
    for r in results:
        for key in REQUIRED_KEYS:
            assert key in r, (r["name"], key)
        assert isinstance(r["value"], float) and math.isfinite(r["value"]) and r["value"] > 0, r
        assert r["target"] > 0
    gen = [r for r in results if r["name"].startswith("generate/")]
    assert all(r["unit"] == "frames/s" and r["baseline_value"] is None and r["met"] is None for r in gen)
    cost = results[-1]
    nocfg, cfg = results[0]["seconds"], results[1]["seconds"]
    assert cost["value"] == nocfg / cfg  # the share of the CFG cost paid without CFG
    assert cost["target"] == 0.55 and cost["met"] == (cost["value"] <= 0.55)
    print_table(results)
    assert "generate/tiny/b1/nocfg" in capsys.readouterr().out


def test_write_results_json_top_level_keys(tmp_path):
    entry = dict(name="x/y", value=1.5, unit="frames/s", baseline_value=None, ratio=None, target=2.0, met=None,
                 extra=float("nan"))
    path = tmp_path / "sub" / "out.json"
    write_results(path, [entry])
    doc = json.loads(path.read_text())
    assert set(doc) == {"machine", "date", "results"}
    assert doc["results"][0]["name"] == "x/y" and doc["results"][0]["extra"] is None  # NaN -> null, strict JSON
    assert {"cpu", "cores", "torch", "threads", "device"} <= set(doc["machine"])


def test_median_time_counts_calls():
    calls = []
    med, all_s = median_time(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5 and len(all_s) == 3 and med >= 0


def test_main_cli_no_peer_writes_json(tmp_path, capsys):
    out = tmp_path / "gen.json"
    assert main(["--presets", "tiny", "--batches", "1", "--frames", "4", "--repeats", "1", "--no-peer",
                 "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert [r["name"] for r in doc["results"]][0] == "generate/tiny/b1/nocfg"


def test_generation_flops_counts_by_hand():
    from types import SimpleNamespace

    from divcfg.bench.generate import generation_flops
    cfg = SimpleNamespace(dim=2, n_layers=1, ffn_mult=4, n_codebooks=1, card=3)
    # One step (T=1, K=1), text length 1: weights 6·4 + 2·4·4 + 2·1·3 = 62 -> 124 FLOPs; attention 4·1·2·(0+1+1) = 16.
    assert generation_flops(cfg, batch=1, frames=1, text_len=1, use_cfg=False) == 140
    # A null row: self q, k, v, o and the feed-forward only, 4·4 + 2·4·4 = 48 -> 96; self-attention 4·1·2·1 = 8.
    assert generation_flops(cfg, batch=3, frames=1, text_len=1, use_cfg=True) == 3 * (140 + 104)


def test_entries_report_the_fraction_of_measured_matmul_peak():
    results = run(presets=("tiny",), batches=(1,), frames=4, repeats=1, include_peer=False, verbose=False)
    gen = results[0]
    assert gen["peak_matmul_flops_per_s"] > 0
    assert gen["fraction_of_peak"] == gen["flops_per_s"] / gen["peak_matmul_flops_per_s"] > 0


def test_bf16_weights_cast_divcfg_and_are_recorded():
    results = run(presets=("tiny",), batches=(1,), frames=4, repeats=1, include_peer=False, weights="bf16")
    assert [r["weights"] for r in results] == ["bf16"] * 3
    assert all(math.isfinite(r["value"]) and r["value"] > 0 for r in results)
