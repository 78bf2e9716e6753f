"""The learning-rate schedules (learner/schedule.py) against hand-computed values, and the learner stepping by one."""
import math

import pytest

from divcfg.learner.learner import Learner
from divcfg.learner.schedule import LrSchedule, cosine_lr
from divcfg.model.policy import build_policy
from tests.learner.test_learner import make_groups


def test_cosine_lr_hand_values():
    # No warm-up, 100 steps, peak 1: starts at the peak, halfway is (1 + 0.1) / 2, ends and stays at the 0.1 floor.
    assert cosine_lr(0, 100, 1.0) == pytest.approx(1.0)
    assert cosine_lr(50, 100, 1.0) == pytest.approx(0.55)
    assert cosine_lr(25, 100, 1.0) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert cosine_lr(100, 100, 1.0) == pytest.approx(0.1)
    assert cosine_lr(150, 100, 1.0) == pytest.approx(0.1)
    # Warm-up: linear to the peak over 10 steps, then the cosine over the remaining 90.
    assert cosine_lr(0, 100, 2.0, warmup=10) == pytest.approx(0.2)
    assert cosine_lr(9, 100, 2.0, warmup=10) == pytest.approx(2.0)
    assert cosine_lr(55, 100, 2.0, warmup=10) == pytest.approx(1.1)


def test_lr_schedule_kinds_and_bad_kind():
    assert [LrSchedule(3e-4, 10)(s) for s in (0, 5, 10)] == [3e-4] * 3
    cos = LrSchedule(3e-4, 10, "cosine")
    assert cos(0) == pytest.approx(3e-4) and cos(10) == pytest.approx(3e-5) and cos(5) == pytest.approx(1.65e-4)
    with pytest.raises(ValueError, match="algo.lr_schedule='linear'"):
        LrSchedule(3e-4, 10, "linear")
    with pytest.raises(ValueError, match="needs the run's learner steps, got 0"):
        LrSchedule(3e-4, 0, "cosine")
    assert LrSchedule(3e-4, 0)(7) == 3e-4  # constant needs no length


def test_learner_steps_at_the_scheduled_rate_from_its_version():
    learner = Learner(build_policy(seed=0), beta=0.0, guidance_scale=3.0, lr=1e-3, baseline="loo", is_clip=2.0,
                      grad_clip=1.0, lr_schedule=LrSchedule(1e-3, 4, "cosine"))
    batch = make_groups(learner.student, ["a slow melody"], g=2, frames=4)
    rates = [learner.step(batch, 2)["losses/lr"] for _ in range(5)]
    assert rates == pytest.approx([1e-3, 1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))), 5.5e-4,
                                   1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(3 * math.pi / 4))), 1e-4])
    # A resumed learner (its version restored) continues the curve where it stopped.
    learner.version = 2
    assert learner.step(batch, 2)["losses/lr"] == pytest.approx(5.5e-4)
