"""Fixtures shared by test modules (a module opts in with `pytestmark = pytest.mark.usefixtures(...)`)."""
from __future__ import annotations

import pytest
import torch

from audiotokens.training import optimisation


@pytest.fixture(scope="session", autouse=True)
def machine_independent_training():
    """Training in the test process runs in fp32 on a CPU, whatever the CPU multiplies natively (train.amp
    would pick bf16 on one with AVX512-BF16 or AMX), and on the threads the test leaves torch with
    (OMP_NUM_THREADS set: the train stage then keeps torch's threads instead of choosing from the load):
    figures that tests compare must not depend on the machine or on what else runs. The tests of the bf16
    path and of the thread policy undo this with monkeypatch."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(optimisation, "cpu_bf16", lambda: "")
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture
def one_thread():
    """Torch on one thread: results that must match bit for bit do not depend on how work was split."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
