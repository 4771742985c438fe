"""The READMEs' "Trying it without weights" commands, run as written (``/tmp/`` and ``out`` moved under the test's
folder): seeded random weights of the full-size network, then ``inference.json`` on the bundle's built-in real
example (SAMUS: pydicom-data's GE ultrasound frame, 640 x 480; SAMIHS: pydicom's CT_small, 128 x 128, 0.66 mm).
The written label map keeps the input's grid; only the commands' own files are left."""

from __future__ import annotations

import shlex
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

pytestmark = pytest.mark.slow  # full-size networks: SAMUS (256 px) and SAMIHS (1024 px), one forward each

CASES = {  # bundle: (the random weights' file, the label map's file, its shape, its voxel size in mm)
    "samus_busi": ("samus_random.pt", "US1_UNCR_seg.nii.gz", (640, 480), (1.0, 1.0)),
    "samihs_ich": ("samihs_ich_random.pt", "CT_small_seg.nii.gz", (128, 128, 1), (0.661468, 0.661468, 5.0)),
}


def readme_smoke_commands(readme: str) -> list[list[str]]:
    """The commands of the first code block after "Trying it without weights", continuation lines joined."""
    block = readme.split("Trying it without weights", 1)[1].split("```", 2)[1]
    return [shlex.split(line) for line in block.replace("\\\n", " ").strip().splitlines()]


@pytest.mark.parametrize("bundle", sorted(CASES))
def test_readme_smoke_commands_run_on_the_built_in_example(repo_root, tmp_path, bundle):
    commands = readme_smoke_commands((repo_root / "bundles" / bundle / "docs" / "README.md").read_text())
    assert [c[:2] for c in commands] == [["python", "tools/random_weights.py"], ["python", "-m"]]
    out = tmp_path / "out"
    for command in commands:
        command = [sys.executable] + [a.replace("/tmp/", f"{tmp_path}/") for a in command[1:]]
        command = [str(out) if a == "out" else a for a in command]
        done = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    weights, name, shape, zooms = CASES[bundle]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", weights])
    assert sorted(p.name for p in out.iterdir()) == [name]
    seg = nib.load(str(out / name))
    assert seg.shape == shape and np.allclose(seg.header.get_zooms(), zooms, atol=1e-5)
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1}
