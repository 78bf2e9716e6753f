"""Reading TensorBoard scalars back and cutting them into step windows."""
import os
import time

import pytest
from torch.utils.tensorboard import SummaryWriter

from divcfg.common.tb_scalars import binned_curve, read_scalars


def test_binned_curve_hand_computed():
    points = {s: (0.0, float(v)) for s, v in zip(range(7), [1, 3, 5, 7, 9, 11, 13])}
    # 7 steps in 3 windows: numpy's array_split gives 3, 2, 2
    assert binned_curve(points, 3) == [{"first_step": 0, "last_step": 2, "mean": 3.0},
                                       {"first_step": 3, "last_step": 4, "mean": 8.0},
                                       {"first_step": 5, "last_step": 6, "mean": 12.0}]
    assert binned_curve({4: (0.0, 2.0), 2: (0.0, 1.0)}, 10) == [{"first_step": 2, "last_step": 2, "mean": 1.0},
                                                               {"first_step": 4, "last_step": 4, "mean": 2.0}]
    assert binned_curve({}, 3) == []
    with pytest.raises(ValueError, match="bins=0"):
        binned_curve(points, 0)


def test_read_scalars_later_files_win_for_a_step_logged_twice(tmp_path):
    for values in ([1.0, 2.0, 3.0], [20.0]):  # a rolled-back run logs step 1 again in a newer file
        w = SummaryWriter(str(tmp_path / "tb"), filename_suffix=f".{time.time_ns()}")
        for step, v in enumerate(values, start=0 if len(values) > 1 else 1):
            w.add_scalar("rewards/diversity_mean", v, step)
        w.close()
        time.sleep(1.1)  # event file names carry the second they were made: order them
    assert len(os.listdir(tmp_path / "tb")) == 2
    got = read_scalars(tmp_path)["rewards/diversity_mean"]
    assert {s: v for s, (_, v) in got.items()} == {0: 1.0, 1: 20.0, 2: 3.0}
