"""The rooms reach ``divcfg`` through the links in ``divcfg/``: a Ray ``working_dir`` upload of a plain checkout and
a built wheel must both carry them as real files."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Imports divcfg from the working directory only: the editable install's .pth puts the checkout on sys.path too.
IMPORT = ("import sys; sys.path = [''] + [p for p in sys.path[1:] if p != {root!r}]; "
          "import divcfg.model.policy as p, divcfg.job, divcfg.conf; print(p.__file__)")


def test_a_ray_working_dir_upload_imports(tmp_path):
    from ray._private.runtime_env.packaging import _zip_files
    package = tmp_path / "wd.zip"
    # What `divcfg submit` uploads: the checkout, minus what .gitignore excludes (as the SDK does).
    _zip_files(str(ROOT), ["**/__pycache__", "worlds", "runs", "results"], str(package), include_gitignore=True)
    with zipfile.ZipFile(package) as z:
        names = set(z.namelist())
        z.extractall(tmp_path / "wd")
    assert {"divcfg/model/policy.py", "model/policy.py", "divcfg/conf/train.yaml"} <= names
    done = subprocess.run([sys.executable, "-c", IMPORT.format(root=str(ROOT))], cwd=tmp_path / "wd",
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "wd" / "divcfg" / "model" / "policy.py")


@pytest.mark.slow
def test_the_wheel_holds_every_room_and_builds_quietly(tmp_path):
    src = tmp_path / "src"  # a copy: setuptools writes build/ and *.egg-info into the tree it builds
    rooms = sorted(p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name not in ("divcfg", "tests"))
    for name in [*rooms, "divcfg"]:
        shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                           str(tmp_path), str(src)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stdout + done.stderr, done.stdout + done.stderr
    (wheel,) = tmp_path.glob("divcfg-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"divcfg/{room}/__init__.py" for room in rooms} <= names
    assert {"divcfg/model/policy.py", "divcfg/conf/train.yaml", "divcfg/conf/algo/diverse.yaml",
            "divcfg/deploy/kuberay/rayjob.yaml"} <= names
    assert not any("__pycache__" in n or n.startswith("tests/") for n in names)
