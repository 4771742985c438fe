"""Every bundle's packaged pins install from wheels on Python 3.10, 3.11 and 3.12 and agree with each other
(``tools/check_pins.py``; asks the package registry, downloads metadata only)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import check_pins  # noqa: E402


@pytest.mark.parametrize("name", ["medsam", "3dsam_pancreas", "msa", "samus_busi", "samihs_ich", "samihs_polyp"])
def test_pins_install_on_every_supported_python(repo_root, name):
    assert check_pins.check(str(repo_root / "bundles" / name)) == []


def test_a_pin_without_a_wheel_is_reported():
    """numpy 2.4 has no wheel for Python 3.10 (the pin the bundles had before 0.2.0)."""
    _, problems = check_pins.resolve({"numpy": "2.4.6"}, "3.10")
    assert len(problems) == 1 and problems[0].startswith("Python 3.10: numpy==2.4.6 has no installable wheel")
