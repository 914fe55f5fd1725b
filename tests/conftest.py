import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One intra-op thread: the test machines are small and shared; OpenMP contention is slow."""
    torch.set_num_threads(1)
