"""The rooms import only downward: pyproject.toml's import-linter contract, run on this checkout and on broken copies.

The linter finds the rooms through the links in ``divcfg/`` (``divcfg/common -> ../common``, ...); without them it
would see ``divcfg.cli`` alone. So the tests also check that it sees every room, and that a contract on a room it
cannot find fails instead of passing over nothing.
"""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
LAYERS = [m.strip() for layer in CONFIG["contracts"][0]["layers"] for m in layer.split("|")]
ROOMS = sorted(p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name not in ("divcfg", "tests"))

# Runs the linter on the ``divcfg`` that the working directory holds (sys.path[0] is "" under -c).
LINT = ("import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(no_cache=True, no_logo=True, config_filenames=tuple(sys.argv[1:])))")


def lint(cwd: Path, *configs: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([sys.executable, "-c", LINT, *configs], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def copy_checkout(dst: Path) -> Path:
    """The rooms, ``divcfg/`` (links kept: they point at the copy's rooms) and pyproject.toml, without caches."""
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "results")
    for room in [*ROOMS, "divcfg"]:
        shutil.copytree(ROOT / room, dst / room, symlinks=True, ignore=skip)
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    return dst


def test_the_rooms_import_only_downward():
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


def test_every_room_is_a_layer_and_the_linter_sees_it():
    import grimp
    assert sorted(m.removeprefix("divcfg.") for m in LAYERS if m != "divcfg.cli") == ROOMS, \
        "a room at the repository root is missing from pyproject.toml's layers (or a layer names no room)"
    for room in ROOMS:
        assert (ROOT / "divcfg" / room).resolve() == ROOT / room, f"divcfg/{room} must link to ../{room}"
    graph = grimp.build_graph("divcfg", cache_dir=None)
    for layer in LAYERS:
        assert layer in graph.modules, f"import-linter cannot find {layer}"
    # Not just the package names: the modules inside each room, and their imports.
    assert {"divcfg.model.policy", "divcfg.job.train", "divcfg.world.build"} <= graph.modules
    assert "divcfg.model.guidance" in graph.find_modules_directly_imported_by("divcfg.model.policy")


def test_a_wrong_import_breaks_the_contract(tmp_path):
    copy = copy_checkout(tmp_path)
    captions = copy / "common" / "data" / "captions.py"
    captions.write_text(captions.read_text() + "\nfrom divcfg.reward import judges  # noqa: E402\n")
    done = lint(copy)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "divcfg.common is not allowed to import divcfg.reward" in done.stdout
    assert "divcfg.common.data.captions -> divcfg.reward.judges" in done.stdout


def test_commons_sub_packages_may_not_import_each_other(tmp_path):
    copy = copy_checkout(tmp_path)
    storage = copy / "common" / "storage" / "checkpoint.py"
    storage.write_text(storage.read_text() + "\nfrom divcfg.common.data import prompts  # noqa: E402\n")
    done = lint(copy)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "common's sub-packages are independent BROKEN" in done.stdout
    assert "divcfg.common.storage.checkpoint -> divcfg.common.data.prompts" in done.stdout


def test_nothing_in_common_may_import_the_model_or_the_codec(tmp_path):
    copy = copy_checkout(tmp_path)
    tokens = copy / "common" / "data" / "tokens.py"
    tokens.write_text(tokens.read_text() + "\nfrom divcfg.codec import offline  # noqa: E402\n")
    done = lint(copy)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "divcfg.common is not allowed to import divcfg.codec" in done.stdout


def test_roles_may_not_import_each_other(tmp_path):
    copy = copy_checkout(tmp_path)
    sample = copy / "actors" / "sample.py"
    sample.write_text(sample.read_text() + "\n\ndef _late():\n    from divcfg.learner import losses  # noqa: F401\n")
    done = lint(copy)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "divcfg.actors.sample -> divcfg.learner.losses" in done.stdout


def test_a_contract_on_a_missing_room_fails(tmp_path):
    config = tmp_path / "contracts.toml"
    config.write_text('[tool.importlinter]\nroot_package = "divcfg"\n\n[[tool.importlinter.contracts]]\n'
                      'name = "x"\ntype = "layers"\nlayers = ["divcfg.cli", "divcfg.nosuchroom", "divcfg.common"]\n')
    done = lint(ROOT, str(config))
    assert done.returncode != 0, done.stdout + done.stderr
    assert "divcfg.nosuchroom" in done.stdout + done.stderr


@pytest.mark.parametrize("room", ROOMS)
def test_no_code_imports_a_room_by_its_bare_name(room):
    """The editable install puts the repository root on sys.path, so ``import common`` would import a second copy
    of every module under another name; the linter does not see it (an external package)."""
    bad = []
    for path in (ROOT / room).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            bad += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                    if n.split(".")[0] in ROOMS]
    assert not bad, bad
