import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# No network at run time: any accidental model-hub access must fail at once, not retry.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

# Deterministic and light: the suite must run in a few minutes on 2 CPU cores.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """Run a test on one intra-op thread: loops of tiny ops gain nothing from a second one,
    and on a busy shared machine OpenMP's spinning threads slow them several-fold."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
