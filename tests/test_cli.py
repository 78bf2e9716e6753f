import json
import subprocess
import sys
import wave

import pytest

from divcfg.cli import _available, main


def test_help_lists_subcommands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in _available():
        assert f"  {name}" in out
    assert "sample" in out


def test_unknown_command(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(_available()))
def test_each_subcommand_has_help(name):
    r = subprocess.run([sys.executable, "-m", "divcfg", name, "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "usage" in r.stdout.lower() or "overrides" in r.stdout.lower()


def test_sample_demo_writes_wavs(tmp_path):
    assert main(["sample", "--demo", "--n", "2", "--frames", "10", "--out", str(tmp_path)]) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert len(manifest["samples"]) == 2
    with wave.open(str(tmp_path / manifest["samples"][0]["file"])) as w:
        assert w.getframerate() == manifest["sample_rate"] and w.getnframes() > 0


def test_sample_bad_inputs(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["sample", "--demo", "--guidance-scale", "-1", "--out", str(tmp_path / "o")]) == 2
    assert "--guidance-scale must be >= 0, got -1.0" in capsys.readouterr().err
    assert main(["sample", "--demo", "--top-p", "1.5", "--out", str(tmp_path / "o")]) == 2
    assert "--top-p must be in (0, 1], got 1.5" in capsys.readouterr().err
