"""The paired standard error of world.json's CFG adherence gap, against a hand computation."""
import math

import pytest

from divcfg.world.build import _paired_se


def test_paired_se_by_hand():
    a, b = [0.2, 0.4, None, 0.5], [0.3, 0.7, 0.9, 0.5]
    # differences over prompts both arms scored: 0.1, 0.3, 0.0 -> mean 0.1333, sample sd 0.15275
    assert _paired_se(a, b) == pytest.approx(math.sqrt(((0.1 - 0.4 / 3) ** 2 + (0.3 - 0.4 / 3) ** 2 + (0.4 / 3) ** 2) / 2) / math.sqrt(3))
    assert _paired_se(None, b) is None and _paired_se([0.1], [0.2]) is None
