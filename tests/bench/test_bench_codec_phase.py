import json

import numpy as np
import pytest

from divcfg.reward.intervals import ratio_interval


def test_the_judge_ratio_and_its_paired_interval():
    """0.6 of the clips right after the round trip against 0.8 as rendered: ratio 0.75; a resample that keeps every
    clip once gives it exactly, and the paired interval brackets it."""
    ceiling = np.array([1.0] * 8 + [0.0] * 2)
    hits = np.array([1.0] * 6 + [0.0] * 4)
    got = ratio_interval(hits, ceiling, np.tile(np.arange(10), (100, 1)))
    assert got == pytest.approx({"ratio": 0.75, "low": 0.75, "high": 0.75})
    idx = np.random.default_rng(0).integers(0, 10, (1000, 10))
    got = ratio_interval(hits, ceiling, idx)
    assert got["low"] < 0.75 < got["high"] and got["high"] - got["low"] > 0.1


@pytest.mark.slow
def test_codec_phase_measures_the_builds_own_round_trip_clips(tiny_world, tmp_path):
    """The default decoder's distance is the one the world build recorded: the bench reads the same 16 clips."""
    from divcfg.bench.codec_phase import main
    out = tmp_path / "phase.json"
    assert main(["--world", str(tiny_world), "--variants", "zero:8,pghi:8", "--out", str(out)]) == 0
    got = json.loads(out.read_text())["variants"]
    built = json.loads((tiny_world / "world.json").read_text())["codec_reconstruction"]["stft_distance"]
    assert got["pghi:8"]["stft_distance"] == pytest.approx(built, abs=1e-4)
    assert got["zero:8"]["stft_distance"] != pytest.approx(built, abs=1e-4)
    assert all(v["decode_x_realtime"] > 0 and "judge" not in v for v in got.values())  # no judge in this world
