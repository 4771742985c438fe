"""Fixtures shared by the bundle tests."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest


@pytest.fixture(scope="session")
def configs(repo_root) -> Path:
    """``bundles/medsam/configs``."""
    return repo_root / "bundles" / "medsam" / "configs"


@pytest.fixture(scope="session")
def weights(litemedsam_weights) -> Path:
    """The converted LiteMedSAM ``model.pt`` (see tests/conftest.py)."""
    return litemedsam_weights


@pytest.fixture(scope="session")
def ct3(totalseg_dir):
    """The 3 mm volume (RAS on disk) and its label map, as nibabel reads them (file voxel order)."""
    image = nib.load(str(totalseg_dir / "ct_abdomen_3mm.nii.gz"))
    label = np.asarray(nib.load(str(totalseg_dir / "ct_abdomen_3mm_labels.nii.gz")).dataobj)
    return image, label
