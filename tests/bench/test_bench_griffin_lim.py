"""``divcfg bench griffin-lim`` runs, compares in one run, and its output matches the baseline's."""
import json

import pytest

from divcfg.bench.run import main


def test_griffin_lim_bench_against_torchaudio_and_a_revision_file(tmp_path):
    out = tmp_path / "gl.json"
    assert main(["griffin-lim", "--clips", "2", "--repeats", "1", "--iters", "2", "--json", str(out)]) == 0
    r = json.loads(out.read_text())["results"][0]
    assert r["baseline"] == "torchaudio.functional.griffinlim" and r["relative_difference"] < 1e-3
    assert r["ratio"] == pytest.approx(r["value"] / r["baseline_value"]) and r["met"] == (r["ratio"] >= r["target"])
    # A revision's vocoder.py as the baseline: here this one's own file, so the outputs agree bit for bit
    import divcfg.codec.vocoder as v
    assert main(["griffin-lim", "--clips", "2", "--repeats", "1", "--iters", "2", "--baseline-file", v.__file__,
                 "--json", str(out)]) == 0
    r = json.loads(out.read_text())["results"][0]
    assert r["baseline"].startswith("griffin_lim_overlap of ") and r["relative_difference"] == 0.0
