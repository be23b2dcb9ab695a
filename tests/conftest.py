import pytest
import torch


@pytest.fixture
def one_thread():
    """One intra-op thread for tests on small tensors: a second thread buys nothing there, and
    when other processes share the 2 cores its synchronisation stalls cost 10-25x wall time
    (measured: tests/test_tasks.py 72 s -> 2.4 s under load average 7)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
