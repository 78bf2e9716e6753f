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
