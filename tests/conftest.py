"""Fixtures shared by test modules (a module opts in with `pytestmark = pytest.mark.usefixtures(...)`)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def machine_independent_training():
    """Training in the test process runs on the threads the test leaves torch with (OMP_NUM_THREADS set: the
    train stage then keeps torch's threads instead of choosing from the load): figures that tests compare
    must not depend on what else runs on the machine. The tests of the thread policy undo this with
    monkeypatch."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture
def one_thread():
    """Torch on one thread: results that must match bit for bit do not depend on how work was split."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
