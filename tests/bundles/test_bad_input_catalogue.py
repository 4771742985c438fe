"""The bad-input catalogue of the bundle command lines (issue 14): each entry runs ``python -m monai.bundle run`` as a
user would and must end with exit status 1, one ``error: ...`` line naming the file or key, no traceback, and
nothing written (the run's output folder and the bundles' own ``eval/`` folders stay as they were).

The damaged inputs go to MedSAM's ``inference.json`` (the main job; they are refused by the shared input checks that
every bundle's configs run first); the config values go to the bundles that read them (MSA, 3DSAM-adapter). The
entries run two at a time in one module fixture (about 30 processes, 5-8 s each).
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from common.data.examples import ct_small_dicom

MEDSAM = "bundles/medsam/configs/inference.json"
MSA = "bundles/msa/configs/inference.json"
SAM3D = "bundles/3dsam_pancreas/configs/inference.json"
BOX = "'boxes': [[72, 0, 109, 28]], 'box_labels': [1]"


def _medsam(image, box: str = BOX, weights="@weights", *extra) -> tuple:
    return (MEDSAM, "--input_dict", f"{{'image': '{image}', {box}}}", "--ckpt_path", str(weights), *extra)


def _series_copy(shared: Path, tmp: Path, name: str) -> tuple[Path, list[Path]]:
    folder = tmp / name
    shutil.copytree(shared / "dicom", folder)
    return folder, sorted(folder.iterdir())


def _nifti(path: Path, array: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
    return path


def _weights_like(weights: Path, path: Path, change) -> Path:
    state = torch.load(weights, weights_only=True)
    torch.save(change(state), path)
    return path


def _with_nan(state: dict) -> dict:
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = torch.full_like(state[key], float("nan"))
    return state


def _cases(shared: Path, tmp: Path, weights: Path) -> dict[str, tuple[tuple, str | tuple[str, ...]]]:
    """``{case: ((config, *arguments), text(s) the error line must contain)}``; inputs are made under ``tmp``."""
    ct = shared / "ct_abdomen_3mm.nii.gz"
    data, raw = ct.read_bytes(), gzip.decompress(ct.read_bytes())
    (tmp / "half.nii.gz").write_bytes(data[: len(data) // 2])
    (tmp / "header_only.nii.gz").write_bytes(gzip.compress(raw[:352]))
    (tmp / "empty.nii.gz").write_bytes(b"")
    (tmp / "notes.nii.gz").write_text("not an image")
    (tmp / "scan.bin").write_bytes(b"\x01\x02" * 500)
    _nifti(tmp / "4d.nii.gz", np.zeros((8, 8, 8, 2), np.float32))
    _nifti(tmp / "zero.nii.gz", np.zeros((8, 0, 8), np.float32))
    nan_ct = nib.load(str(ct)).get_fdata().astype(np.float32)
    nan_ct[10, 10, 10] = np.nan
    _nifti(tmp / "nan_voxels.nii.gz", nan_ct)
    two, files = _series_copy(shared, tmp, "two_series")
    scout = pydicom.dcmread(files[0])
    scout.SeriesInstanceUID, scout.SeriesDescription = "1.2.3.4", "scout"
    scout.save_as(two / "scout.dcm")
    gap, files = _series_copy(shared, tmp, "missing_slice")
    files[7].unlink()
    dup, files = _series_copy(shared, tmp, "repeated_slice")
    shutil.copy(files[3], dup / "copy.dcm")
    cut, files = _series_copy(shared, tmp, "cut_slice")
    files[5].write_bytes(files[5].read_bytes()[:-2000])
    (tmp / "niftis").mkdir()
    shutil.copy(ct, tmp / "niftis")
    (tmp / "texts").mkdir()
    (tmp / "texts" / "readme.txt").write_text("no images here")
    nan_weights = _weights_like(weights, tmp / "nan_weights.pt", _with_nan)
    misfit = _weights_like(weights, tmp / "misfit.pt", lambda state: dict(list(state.items())[1:]))
    (tmp / "garbage.pt").write_bytes(b"not a checkpoint")
    small = ct_small_dicom()
    return {
        "truncated gzip": (_medsam(tmp / "half.nii.gz"), "half.nii.gz is damaged: its gzip stream does not inflate"),
        "header only": (_medsam(tmp / "header_only.nii.gz"), "header_only.nii.gz is truncated"),
        "empty file": (_medsam(tmp / "empty.nii.gz"), "empty.nii.gz is an empty file"),
        "text named nifti": (_medsam(tmp / "notes.nii.gz"), "notes.nii.gz is not a readable NIfTI file"),
        "not an image": (_medsam(tmp / "scan.bin"), "scan.bin is not an image file ITK can read"),
        "4-D image": (_medsam(tmp / "4d.nii.gz"), "4d.nii.gz is a 4-D image (shape (8, 8, 8, 2))"),
        "zero-size image": (_medsam(tmp / "zero.nii.gz"), "zero.nii.gz has a zero-size axis"),
        "NaN voxels": (_medsam(tmp / "nan_voxels.nii.gz"), "has 1 NaN/infinite voxels"),
        "two series": (_medsam(two), "holds 2 DICOM series"),
        "missing slice": (_medsam(gap), "slices are missing"),
        "repeated slice": (_medsam(dup), "slice position(s) repeat"),
        "truncated slice": (_medsam(cut), f"{files[5].name} is truncated"),
        "folder of NIfTI": (_medsam(tmp / "niftis"), "holds no DICOM image files; it holds 1 other file(s)"),
        "folder of text": (_medsam(tmp / "texts"), "holds no DICOM image files"),
        "missing image": (_medsam("/no/such/ct.nii.gz"), "'image': input not found: /no/such/ct.nii.gz"),
        "NaN weights": (
            _medsam(small, weights=nan_weights),
            ("nan_weights.pt", "NaN/infinite value(s) in 1 tensor(s)"),
        ),
        "misfitting weights": (  # a multi-line message, reported on one line
            _medsam(small, weights=misfit),
            ("misfit.pt does not fit", "1 missing key(s)"),
        ),
        "garbage weights": (_medsam(small, weights=tmp / "garbage.pt"), "garbage.pt: not a PyTorch checkpoint"),
        "missing weights": (_medsam(small, weights="/no/such/model.pt"), "model weights not found: /no/such/model.pt"),
        "string box label": (_medsam(small, "'boxes': [[72, 0, 109, 28]], 'box_labels': ['liver']"), "'box_labels'"),
        "box label 300": (_medsam(small, "'boxes': [[72, 0, 109, 28]], 'box_labels': [300]"), "labels must be <= 255"),
        "inverted box": (_medsam(small, "'boxes': [[109, 28, 72, 0]], 'box_labels': [1]"), "is inverted"),
        "mistyped override": (
            (*_medsam(small), "--ouput_dir", str(tmp / "elsewhere")),
            "'--ouput_dir' is not a key of bundles/medsam/configs/inference.json (did you mean '--output_dir'?)",
        ),
        "device cuda": ((*_medsam(small), "--device", "cuda"), "'device': 'cuda' asked for, but this machine has no"),
        "MSA label 300": ((MSA, "--output_label", "300"), "'output_label' must be an integer label in 1..255"),
        "MSA label 2.5": ((MSA, "--output_label", "2.5"), "'output_label' must be an integer label in 1..255"),
        "3DSAM label -1": ((SAM3D, "--output_label", "-1"), "'output_label' must be an integer label in 1..255"),
        "3DSAM label string": ((SAM3D, "--output_label", "liver"), "got 'liver'"),
        "3DSAM inverted HU": ((SAM3D, "--hu_range", "[250, -175]"), "'hu_range' must be [low, high] with low < high"),
        "3DSAM zero std": ((SAM3D, "--intensity_std", "0"), "'intensity_std' must be a number above 0, got 0"),
        "MSA depth grouping": ((MSA, "--depth_grouping", "upstream"), "'depth_grouping' must be one of"),
    }


def _run(repo_root: Path, arguments: tuple, out: Path) -> subprocess.CompletedProcess:
    config, *rest = arguments
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, *rest, "--output_dir", str(out)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    env.pop("SAM_BUNDLES_TRACEBACK", None)
    return subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=300, env=env)


def _bundle_outputs(repo_root: Path) -> set[Path]:
    return {p for p in (repo_root / "bundles").glob("*/eval/**/*") if p.is_file()}


@pytest.fixture(scope="module")
def catalogue(repo_root, totalseg_dir, weights, tmp_path_factory):
    """``{case: (completed process, expected text, its output folder)}``, plus the bundles' outputs before/after."""
    tmp = tmp_path_factory.mktemp("bad_inputs")
    cases = _cases(totalseg_dir, tmp, weights)
    if torch.cuda.is_available():
        cases.pop("device cuda")
    before = _bundle_outputs(repo_root)
    names = sorted(cases)
    outs = {name: tmp / "out" / name.replace(" ", "_") for name in names}
    arguments = {n: tuple(str(weights) if a == "@weights" else a for a in cases[n][0]) for n in names}
    with ThreadPoolExecutor(2) as pool:
        done = dict(zip(names, pool.map(lambda n: _run(repo_root, arguments[n], outs[n]), names)))
    results = {n: (done[n], cases[n][1], outs[n]) for n in names}
    return results, before, _bundle_outputs(repo_root)


CASE_NAMES = [
    "truncated gzip", "header only", "empty file", "text named nifti", "not an image", "4-D image", "zero-size image",
    "NaN voxels", "two series", "missing slice", "repeated slice", "truncated slice", "folder of NIfTI",
    "folder of text", "missing image", "NaN weights", "misfitting weights", "garbage weights", "missing weights",
    "string box label", "box label 300", "inverted box", "mistyped override", "device cuda", "MSA label 300",
    "MSA label 2.5",
    "3DSAM label -1", "3DSAM label string", "3DSAM inverted HU", "3DSAM zero std", "MSA depth grouping",
]  # fmt: skip


@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_input_ends_in_one_error_line_and_writes_nothing(catalogue, case):
    results, before, after = catalogue
    if case not in results:
        pytest.skip("this machine has a CUDA GPU: --device cuda is valid here")
    result, expected, out = results[case]
    text = result.stdout + result.stderr
    lines = text.strip().splitlines()
    assert result.returncode == 1, text[-3000:]
    expected = (expected,) if isinstance(expected, str) else expected
    assert lines[-1].startswith("error: ") and all(e in lines[-1] for e in expected), text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))
    assert after == before  # nothing landed in a bundle's own eval/ folder either


def test_every_catalogue_entry_is_asserted(catalogue):
    results, _, _ = catalogue
    assert set(results) | ({"device cuda"} if torch.cuda.is_available() else set()) == set(CASE_NAMES)


def test_ddp_prefixed_weights_are_accepted(repo_root, weights, tmp_path):
    """A checkpoint saved from DistributedDataParallel (``module.`` keys) runs like the plain one."""
    ddp = _weights_like(weights, tmp_path / "ddp.pt", lambda s: {f"module.{k}": v for k, v in s.items()})
    plain, prefixed = tmp_path / "plain", tmp_path / "prefixed"
    for path, out in ((weights, plain), (ddp, prefixed)):
        result = _run(repo_root, _medsam(ct_small_dicom(), weights=path), out)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    (a,), (b,) = sorted(plain.glob("*.nii.gz")), sorted(prefixed.glob("*.nii.gz"))
    assert np.array_equal(nib.load(str(a)).get_fdata(), nib.load(str(b)).get_fdata())
