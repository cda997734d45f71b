"""CLIP tests run single-threaded: their tensors are tiny, and on a shared 2-core machine (or under pytest-xdist)
two OpenMP threads per process oversubscribe the cores and make small ops 10-40x slower."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
