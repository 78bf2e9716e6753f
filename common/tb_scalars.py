"""Reading a run's TensorBoard scalars back: the pipeline benchmark's windows and the evaluation's training curves."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def read_scalars(run_dir: str | Path) -> dict[str, dict[int, tuple[float, float]]]:
    """``{tag: {step: (wall_time, value)}}`` from every event file under ``run_dir/tb`` (a later file's value for a
    step wins: a resumed or rolled-back run logs the steps it redoes again)."""
    out: dict[str, dict[int, tuple[float, float]]] = {}
    for events in sorted((Path(run_dir) / "tb").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})  # 0: keep every step, no sampling
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, {}).update({e.step: (e.wall_time, e.value) for e in acc.Scalars(tag)})
    return out


def binned_curve(points: dict[int, tuple[float, float]], bins: int) -> list[dict]:
    """A scalar's steps cut into ``bins`` windows of (nearly) equal step counts, in step order: each window's first
    and last step and the mean of its values. Fewer logged steps than ``bins``: one window per step."""
    if bins < 1:
        raise ValueError(f"bins={bins}: must be >= 1")
    steps = sorted(points)
    out = []
    for window in np.array_split(np.asarray(steps), min(bins, len(steps))) if steps else []:
        out.append({"first_step": int(window[0]), "last_step": int(window[-1]),
                    "mean": float(np.mean([points[int(s)][1] for s in window]))})
    return out
