"""Fixtures shared by test modules (a module opts in with `pytestmark = pytest.mark.usefixtures(...)`)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Torch on one thread: results that must match bit for bit do not depend on how work was split."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
