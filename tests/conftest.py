import os

import pytest
import torch

# Tests run on 2 cores; keep torch from oversubscribing them.
torch.set_num_threads(int(os.environ.get("VAPO_TEST_THREADS", "2")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
