"""The geometry round trip of issue 14: the shared 3 mm CT stored three other ways, segmented by MedSAM's
``inference.json`` with the equivalent liver box, gives the same mask in physical space and keeps each file's exact
affine.

* ``lps``: x and y flipped in the array (affine adjusted: the same image in space);
* ``permuted``: array axes stored as (y, x, z) (affine columns swapped);
* ``oblique``: the same voxels under a direction rotated 20 degrees about z and 10 degrees about x (a tilted
  acquisition; the default LPS pipeline picks the nearest axes, then restores the file's grid).
The box covers the liver on the 5 slices around its middle. Each mask is mapped back onto the original voxel grid
by the inverse of the (exact) array change, so no interpolation enters the comparison.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

LIVER = 5
SLAB = 5  # slices of the liver box


def _rotation(z_deg: float, x_deg: float) -> np.ndarray:
    a, b = np.radians(z_deg), np.radians(x_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def _variants(array: np.ndarray, affine: np.ndarray, box: list[int]):
    """``{name: (array, affine, box, back)}``; ``back`` maps a mask of that file onto the original voxel grid."""
    nx, ny, _ = array.shape
    x0, y0, z0, x1, y1, z1 = box
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:3, 3] = [nx - 1, ny - 1, 0]
    swap = np.eye(4)[[1, 0, 2, 3]]
    tilt = np.eye(4)
    tilt[:3, :3] = _rotation(20, 10)
    return {
        "original": (array, affine, box, lambda m: m),
        "lps": (array[::-1, ::-1], affine @ flip, [nx - 1 - x1, ny - 1 - y1, z0, nx - 1 - x0, ny - 1 - y0, z1],
                lambda m: m[::-1, ::-1]),
        "permuted": (array.transpose(1, 0, 2), affine @ swap, [y0, x0, z0, y1, x1, z1], lambda m: m.transpose(1, 0, 2)),
        "oblique": (array, tilt @ affine, box, lambda m: m),
    }  # fmt: skip


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_reoriented_permuted_and_oblique_files_give_the_same_mask(repo_root, totalseg_dir, weights, tmp_path):
    ct = nib.load(str(totalseg_dir / "ct_abdomen_3mm.nii.gz"))
    labels = np.asarray(nib.load(str(totalseg_dir / "ct_abdomen_3mm_labels.nii.gz")).dataobj)
    liver = labels == LIVER
    middle = int(np.median(np.argwhere(liver)[:, 2]))
    slab = slice(middle - SLAB // 2, middle + SLAB // 2 + 1)  # a 5-slice box keeps the four runs short
    where = np.argwhere(liver[:, :, slab]) + [0, 0, slab.start]
    box = [*where.min(0).tolist(), *where.max(0).tolist()]
    array = np.asarray(ct.dataobj).astype(np.int16)
    masks = {}
    for name, (data, affine, variant_box, back) in _variants(array, ct.affine, box).items():
        image = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), str(image))
        out = tmp_path / f"out_{name}"
        command = [
            sys.executable, "-m", "monai.bundle", "run", "--config_file", "bundles/medsam/configs/inference.json",
            "--input_dict", f"{{'image': '{image}', 'boxes': [{variant_box}], 'box_labels': [1]}}",
            "--ckpt_path", str(weights), "--output_dir", str(out),
        ]  # fmt: skip
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
        result = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=600, env=env)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        (written,) = sorted(Path(out).glob("*.nii.gz"))
        seg = nib.load(str(written))
        np.testing.assert_array_equal(seg.affine, nib.load(str(image)).affine)  # the file's exact geometry
        assert seg.shape == data.shape
        masks[name] = back(np.asarray(seg.dataobj) > 0)
    reference = masks.pop("original")
    in_slab = np.zeros_like(liver)
    in_slab[:, :, slab] = liver[:, :, slab]
    assert _dice(reference, in_slab) > 0.8  # a real liver, not an empty or full mask
    dices = {name: round(float(_dice(mask, reference)), 4) for name, mask in masks.items()}
    print(f"liver Dice to the reference label {_dice(reference, in_slab):.4f}; to the original's mask {dices}")
    assert all(d >= 0.99 for d in dices.values()), dices


@pytest.fixture(scope="module")
def weights(litemedsam_weights):
    return litemedsam_weights
