import json

import pytest


@pytest.mark.slow
def test_codec_phase_measures_the_builds_own_round_trip_clips(tiny_world, tmp_path):
    """The default decoder's distance is the one the world build recorded: the bench reads the same 16 clips."""
    from divcfg.experiments.codec_phase import main
    out = tmp_path / "phase.json"
    assert main(["--world", str(tiny_world), "--variants", "zero:8,pghi:8", "--out", str(out)]) == 0
    got = json.loads(out.read_text())["variants"]
    built = json.loads((tiny_world / "world.json").read_text())["codec_reconstruction"]["stft_distance"]
    assert got["pghi:8"]["stft_distance"] == pytest.approx(built, abs=1e-4)
    assert got["zero:8"]["stft_distance"] != pytest.approx(built, abs=1e-4)
    assert all(v["decode_x_realtime"] > 0 and "judge" not in v for v in got.values())  # no judge in this world
