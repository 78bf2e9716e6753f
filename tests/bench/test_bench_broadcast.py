import pytest

from divcfg.bench.broadcast import WeightReader, snapshot
from divcfg.bench.run import main


def test_snapshot_size_and_reader():
    w = snapshot(4 * 2**20, tensors=4)
    assert sum(v.nbytes for v in w.values()) == 4 * 2**20
    assert WeightReader().set_weights(7, w) == 7


def test_bench_cli_lists_and_refuses(capsys):
    assert main(["--help"]) == 0
    assert "broadcast" in capsys.readouterr().out
    assert main(["nope"]) == 2


@pytest.mark.ray
def test_both_transports_deliver_and_are_timed_in_one_run(tmp_path):
    import json

    out = tmp_path / "b.json"
    assert main(["broadcast", "--sizes-mb", "1", "--actors", "1,2", "--repeats", "1", "--json", str(out)]) == 0
    rows = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    assert sorted(rows) == ["broadcast/1MB/A1", "broadcast/1MB/A2", "broadcast_collective/1MB/A1",
                            "broadcast_collective/1MB/A2"]
    assert {r["transport"] for r in rows.values()} == {"object", "collective"}
    assert all(r["value"] > 0 and r["ratio"] == r["value"] / r["baseline_value"] for r in rows.values())
