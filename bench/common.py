"""Helpers shared by every benchmark: timing, machine description, the results JSON and a printed table.

A result entry is a dict with at least ``name``, ``value``, ``unit``, ``baseline_value``, ``ratio``, ``target`` and
``met``; benchmarks may add more keys (seconds, parameter counts, ...). ``baseline_value``, ``ratio`` and ``met`` are
``None`` when there is nothing to compare against (e.g. the peer was not run).
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

REQUIRED_KEYS = ("name", "value", "unit", "baseline_value", "ratio", "target", "met")


def median_time(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> tuple[float, list[float]]:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed: ``(median seconds, every timing)``."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(max(0, warmup)):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def interleaved_median_times(fns: dict[str, Callable[[], Any]], repeats: int = 3,
                             warmup: int = 1) -> dict[str, tuple[float, list[float]]]:
    """Like :func:`median_time` for several functions, alternating them call by call so that a change in machine load
    hits all of them alike (ratios between them stay meaningful on a shared machine): ``{name: (median, all)}``."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(max(0, warmup)):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(ts), ts) for name, ts in times.items()}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info(device: str | torch.device | None = None) -> dict:
    """Where the numbers came from: CPU model, cores, torch version, intra-op threads and the device timed."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    device = torch.device(device) if device is not None else torch.device("cpu")
    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if hasattr(os, "getloadavg"):  # other work on the machine skews timings; record how busy it was
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)
    if device.type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _clean(x):
    """JSON-safe: non-finite floats become None (strict JSON has no NaN/Infinity)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def write_results(path: str | os.PathLike, results: list[dict], machine: dict | None = None) -> dict:
    """Write ``{"machine", "date", "results"}`` JSON to ``path`` (parents created) and return the document."""
    for r in results:
        missing = [k for k in REQUIRED_KEYS if k not in r]
        if missing:
            raise ValueError(f"result {r.get('name', r)!r} lacks key(s) {missing}")
    doc = {
        "machine": machine if machine is not None else machine_info(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "results": _clean(list(results)),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return doc


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "NO"
    if isinstance(x, float):
        return f"{x:.4g}" if abs(x) < 1e5 else f"{x:.3e}"
    return str(x)


def print_table(results: Iterable[dict], file=None) -> None:
    """A short aligned table: name, value, unit, baseline, ratio, target, met."""
    cols = ("name", "value", "unit", "baseline_value", "ratio", "target", "met")
    heads = ("name", "value", "unit", "baseline", "ratio", "target", "met")
    rows = [[_fmt(r.get(c)) for c in cols] for r in results]
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(heads)]
    line = lambda cells: "  ".join(c.ljust(w) if i in (0, 2) else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    print(line(heads), file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for row in rows:
        print(line(row), file=file)


# The prompts every generation benchmark samples (one per row, cycled).
PROMPTS = [
    "upbeat jazz with piano and brushed drums",
    "slow ambient pads, warm and spacious",
    "energetic rock with distorted guitars",
    "lo-fi hip hop beat with vinyl crackle",
    "orchestral film score, rising strings",
    "acoustic folk guitar and soft vocals",
    "driving techno at 130 bpm",
    "bossa nova with nylon guitar",
]


def _prompts(batch: int) -> list[str]:
    return [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
