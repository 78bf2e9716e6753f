"""Loading the world's Basic Pitch and madmom judges by name, for the evaluating process (reward/judges.py) and for
each judge worker (reward/judge_pool.py) alike."""
from __future__ import annotations

import os

from divcfg.reward import pitch_judge, rhythm_judge

LOADERS = {"pitch": pitch_judge.load_pitch_judge, "rhythm": rhythm_judge.load_rhythm_judge}
"""Each judge's loader from a world directory (None where the world configures no such judge)."""
RULES = {"pitch": pitch_judge.judge_adherence, "rhythm": rhythm_judge.judge_adherence}
"""Each judge's adherence: ``rule(judge, clips [N, samples], sample_rate, requested) -> float64 [N]``."""


def load_independent(world_dir: str | os.PathLike) -> tuple[dict[str, object], dict[str, str]]:
    """The independent judges the world configures, and those it configures but this install can't run (name ->
    why: the missing package and how to install it). The others still judge."""
    judges, skipped = {}, {}
    for name, load in LOADERS.items():
        try:
            judge = load(world_dir)
        except ImportError as e:
            skipped[name] = str(e)
            continue
        if judge is not None:
            judges[name] = judge
    return judges, skipped
