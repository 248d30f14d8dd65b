"""Model tests run on one intra-op thread: the models are tiny, so a second thread costs
more than it saves, and on a busy 2-core machine spinning OpenMP workers made these tests
about 10x slower."""
import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
