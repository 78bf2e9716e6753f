import os

import pytest
import torch

# Two cores are shared by the test process and any Ray workers it starts.
torch.set_num_threads(1)
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(autouse=True)
def _seeded_global_rngs():
    """Every test starts from the same global torch, numpy and Python random state: a draw a test leaves unseeded
    (``torch.randn(...)``) is then the same on every run and in any test order, so a failure reproduces."""
    import random

    import numpy as np
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """The tiny world (built once per session, 2-5 min on 2 cores), or a prebuilt one named by DIVCFG_TEST_TINY_WORLD."""
    from divcfg.common.data.world_dir import World
    from divcfg.world.build import build_world
    prebuilt = os.environ.get("DIVCFG_TEST_TINY_WORLD")
    if prebuilt:
        from pathlib import Path
        if not World(prebuilt).is_built():
            raise FileNotFoundError(f"DIVCFG_TEST_TINY_WORLD={prebuilt} is not a complete world")
        return Path(prebuilt)
    root = tmp_path_factory.mktemp("world") / "tiny"
    build_world(root, "tiny", seed=0, progress=False)
    return root
