"""Fixtures shared by the bundle tests."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def configs(repo_root) -> Path:
    """``bundles/medsam/configs``."""
    return repo_root / "bundles" / "medsam" / "configs"


@pytest.fixture(scope="session")
def weights(litemedsam_weights) -> Path:
    """The converted LiteMedSAM ``model.pt`` (see tests/conftest.py)."""
    return litemedsam_weights
