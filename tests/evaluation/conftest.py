"""One intra-op thread for these tests: their models are tiny, and on a shared 2-core machine OpenMP
threads waiting for each other made the training smoke runs several times slower."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
