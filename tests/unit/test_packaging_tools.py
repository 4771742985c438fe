"""Offline parts of the packaging tools: renaming ``common`` in vendored code and configs, pin consistency."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import check_pins  # noqa: E402
import package_bundle  # noqa: E402


def test_vendored_package_names_are_identifiers():
    names = {b: package_bundle.vendored_package(b) for b in ("medsam", "3dsam_pancreas", "msa")}
    assert names == {
        "medsam": "sam_bundles_medsam",
        "3dsam_pancreas": "sam_bundles_3dsam_pancreas",
        "msa": "sam_bundles_msa",
    }
    assert all(n.isidentifier() for n in names.values())


def test_rewrite_common_renames_only_the_package():
    source = "\n".join(
        [
            "from common.networks.sam import Sam",
            "import common.transforms.io as io",
            "from common import errors",
            "from .common import LayerNorm2d",
            '"$import common.bundle as bundle"',
            '"_target_": "common.methods.medsam.BoxPropagationInferer"',
            "this is common. my_common.x, common_x and uncommon.y stay",
        ]
    )
    assert package_bundle.rewrite_common(source, "pkg").splitlines() == [
        "from pkg.networks.sam import Sam",
        "import pkg.transforms.io as io",
        "from pkg import errors",
        "from .common import LayerNorm2d",
        '"$import pkg.bundle as bundle"',
        '"_target_": "pkg.methods.medsam.BoxPropagationInferer"',
        "this is common. my_common.x, common_x and uncommon.y stay",
    ]


def test_conflicting_pins_are_reported():
    pins = {"monai": "1.6.1", "numpy": "2.2.6", "torch": "2.13.0"}
    requires = {
        "monai": ["numpy<2.0,>=1.24", "torch>=2.4", "nibabel; extra == 'nibabel'"],
        "torch": ["typing-extensions>=4", "numpy>=2.3; python_version >= '3.12'"],
    }
    assert check_pins.conflicts(pins, requires, "3.10") == [
        "Python 3.10: monai requires numpy<2.0,>=1.24, but numpy==2.2.6 is pinned"
    ]
    assert len(check_pins.conflicts(pins, requires, "3.12")) == 2  # the marker now applies
    assert check_pins.conflicts(pins, {"monai": ["numpy>=1.24,<3", "torch>=2.4"]}, "3.11") == []


def test_check_pins_refuses_a_folder_that_is_not_a_bundle(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a bundle"):
        check_pins.bundle_pins(str(tmp_path))
