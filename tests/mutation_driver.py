"""Run mutmut's mutants against a chosen list of tests, one pytest process per mutant (RELIABILITY.md, "Mutation
testing"). Not a test module: pytest does not collect it (its name does not start with ``test_``).

mutmut (3.8.1) only *generates* the mutants here. In a scratch copy of the tree whose ``divcfg/`` holds the rooms
as real directories (``cp -rL``) and whose ``pyproject.toml`` has a ``[tool.mutmut]`` table naming the
``source_paths``, generate them with ``mutmut run`` (stop it once "Generating mutants" is done) or with
mutmut's own ``copy_src_dir``/``copy_also_copy_files``/``create_mutants`` steps. That writes ``mutants/``: every
mutated file holds the original functions behind trampolines plus one copy per mutant, and a ``<file>.meta`` JSON
whose ``exit_code_by_key`` lists the mutant names (``divcfg.job.books.xǁPromptStreamǁnext__mutmut_3``).

This driver then, inside ``mutants/``, runs ``pytest -x -q -p no:cacheprovider -m "not slow" TESTS`` once
unmutated (it must pass; its time sets the timeout), once with mutmut's ``fail`` control (every trampoline raises:
it must come out killed, or the tests never reach the mutated code) and once per mutant with
``MUTANT_UNDER_TEST=<name>`` (the trampolines read it at every call, in subprocesses and Ray workers too) and
``PYTHONPATH=<mutants>`` (so ``divcfg`` is the mutated copy, not the editable install). A mutant is killed when
pytest exits non-zero, killed by timeout when it runs past the timeout, and survived otherwise.

Usage (on a shared machine, under ``nice -n 19``)::

    python tests/mutation_driver.py --mutants /tmp/mut/mutants --prefix divcfg.job.books. \\
        --sample 60 --seed 20 --out books.json -- tests/job/test_books.py tests/job/test_scheduler.py

``--sample N --seed S`` runs ``random.Random(S).sample`` of N of the sorted names (all of them without
``--sample``); ``--names`` runs the named mutants only (to rerun survivors against new tests). The JSON is
written after every mutant, so a stopped run keeps what it did (``--resume`` goes on from it); it holds the
settings, each mutant's status, seconds, exit code, first failing test and, for survivors, the diff of the mutated
function against the original, and the score.
"""
from __future__ import annotations

import argparse
import ast
import difflib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def mutant_names(mutants: Path, prefix: str) -> list[str]:
    """Every mutant name whose module path starts with ``prefix``, from mutmut's ``.meta`` files, sorted."""
    names: set[str] = set()
    for meta in mutants.rglob("*.meta"):
        names.update(k for k in json.loads(meta.read_text())["exit_code_by_key"] if k.startswith(prefix))
    return sorted(names)


def mutant_diff(mutants: Path, name: str) -> str:
    """The unified diff of the mutated function against the original one (mutmut's ``show``, without its config)."""
    module, _, func = name.rpartition(".")
    source = (mutants / (module.replace(".", "/") + ".py")).read_text()
    orig_name = re.sub(r"__mutmut_\d+$", "__mutmut_orig", func)
    defs = {n.name: n for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    if func not in defs or orig_name not in defs:
        return "(function not found)"
    orig, mutant = (ast.get_source_segment(source, defs[n]).replace(n, "f") for n in (orig_name, func))
    return "\n".join(difflib.unified_diff(orig.splitlines(), mutant.splitlines(), lineterm="", n=1))


def run_pytest(mutants: Path, tests: list[str], mutant: str, timeout: float | None) -> tuple[int | None, float, str]:
    """One pytest run with ``MUTANT_UNDER_TEST=mutant``: its exit code (None on timeout), seconds and the first
    ``FAILED``/``ERROR`` line of its summary (pytest's output goes to a file: a Ray daemon a test leaves behind
    could hold a pipe open)."""
    env = dict(os.environ, MUTANT_UNDER_TEST=mutant, PYTHONPATH=str(mutants))
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow", *tests]
    start = time.monotonic()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, cwd=mutants, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: pytest and whatever it started (Ray, workers)
            proc.wait()
            rc = None
        log.seek(0)
        failed = next((line.strip() for line in log if line.startswith(("FAILED ", "ERROR "))), "")
    return rc, time.monotonic() - start, failed


def summary(results: dict) -> dict:
    """Counts and score over the mutants (the ``fail`` control left out)."""
    statuses = [r["status"] for n, r in results.items() if n != "fail"]
    killed = statuses.count("killed") + statuses.count("timeout")
    score = round(100 * killed / len(statuses), 1) if statuses else None
    return {"run": len(statuses), "killed": statuses.count("killed"), "timeout": statuses.count("timeout"),
            "survived": statuses.count("survived"), "score": score}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mutants", type=Path, required=True, help="mutmut's mutants/ directory")
    p.add_argument("--prefix", required=True, help="mutant-name prefix, e.g. divcfg.job.books.")
    p.add_argument("--sample", type=int, help="run a seeded random sample of this many mutants")
    p.add_argument("--seed", type=int, default=20)
    p.add_argument("--names", nargs="*", help="run only these mutants")
    p.add_argument("--timeout-factor", type=float, default=10.0, help="timeout = factor x the clean run's seconds")
    p.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    p.add_argument("--resume", action="store_true", help="keep the mutants already in --out and run the others")
    p.add_argument("tests", nargs="+", help="the TESTS list, paths relative to the mutants directory")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mutants = args.mutants.resolve()
    names = args.names or mutant_names(mutants, args.prefix)
    generated = len(mutant_names(mutants, args.prefix))
    if args.sample and not args.names:
        names = random.Random(args.seed).sample(names, min(args.sample, len(names)))
    rc, clean, failed = run_pytest(mutants, args.tests, "", None)
    if rc != 0:
        print(f"the unmutated run failed (exit code {rc}, {failed}): fix the TESTS list first", file=sys.stderr)
        return 2
    timeout = args.timeout_factor * clean
    report = {"prefix": args.prefix, "generated": generated, "sample": args.sample, "seed": args.seed,
              "tests": args.tests, "clean_seconds": round(clean, 1), "timeout_seconds": round(timeout, 1),
              "mutants": {}}
    if args.resume and args.out.exists():
        report["mutants"] = json.loads(args.out.read_text())["mutants"]
    for i, name in enumerate(["fail", *names]):
        if name in report["mutants"]:
            continue
        code, secs, failed = run_pytest(mutants, args.tests, name, timeout)
        status = "timeout" if code is None else "survived" if code == 0 else "killed"
        entry = {"status": status, "seconds": round(secs, 1), "exit_code": code, "failed": failed}
        if status == "survived" and name != "fail":
            entry["diff"] = mutant_diff(mutants, name)
        report["mutants"][name] = entry
        report["summary"] = summary(report["mutants"])
        args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False))
        print(f"[{i}/{len(names)}] {status:8} {secs:6.1f}s {name}", flush=True)
    if report["mutants"]["fail"]["status"] == "survived":
        print("the fail control survived: the tests never reach the mutated code", file=sys.stderr)
        return 1
    print(json.dumps(report["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
