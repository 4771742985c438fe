"""Fixtures shared by the bundle tests."""

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def configs(repo_root) -> Path:
    """``bundles/medsam/configs``."""
    return repo_root / "bundles" / "medsam" / "configs"


@pytest.fixture(scope="session")
def weights(litemedsam_weights) -> Path:
    """The converted LiteMedSAM ``model.pt`` (see tests/conftest.py)."""
    return litemedsam_weights


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny-network tests (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    their tensors are too small to gain from more, and on a shared 2-core machine two threads per op make training
    several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
