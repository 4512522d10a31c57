"""Shared test setup: one torch thread per test process (tiny shapes gain nothing from more, and the
2-core CI machine also runs the 2-process DDP test)."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
