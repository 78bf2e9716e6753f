import os

import pytest
import torch

# Two cores are shared by the test process and any Ray workers it starts.
torch.set_num_threads(1)
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)
