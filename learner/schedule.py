"""Learning-rate schedules of the learner and of ``divcfg pretrain``: pure functions of the step.

Why the finetune has one: with a constant rate, the student's KL to the CFG teacher stops falling at a level set by
the rate's noise (RESULTS.md, "The paper's β sweep on codec version 3": at 3e-4 it levels off near 0.6× its start
after about 200 of 500 steps, and at 6e-4 it ends higher than it started). A rate that decays over the run lets the
last steps settle below that level.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("constant", "cosine")
FLOOR = 0.1
"""Where cosine ends, as a fraction of the peak rate (pretraining's schedule has always ended there)."""


def cosine_lr(step: int, total: int, peak: float, warmup: int = 0, floor: float = FLOOR) -> float:
    """Linear warm-up over ``warmup`` steps to ``peak``, then half a cosine from ``peak`` down to ``floor × peak``
    at step ``total`` (held there after it)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass(frozen=True)
class LrSchedule:
    """The finetune's rate at each learner version (``algo.lr``, ``algo.lr_schedule`` over the run's
    ``learner.steps``). A plain value, so that it travels to a learner group's Ray workers as it is."""

    peak: float
    total_steps: int
    kind: str = "constant"

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ValueError(f"algo.lr_schedule={self.kind!r}: must be one of {SCHEDULES}")
        if self.kind == "cosine" and self.total_steps < 1:
            # Without the run's length the cosine would sit at its floor from the second step on.
            raise ValueError(f"algo.lr_schedule=cosine needs the run's learner steps, got {self.total_steps}")

    def __call__(self, step: int) -> float:
        if self.kind == "constant":
            return self.peak
        return cosine_lr(step, self.total_steps, self.peak)
