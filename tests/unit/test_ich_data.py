"""SAMIHS datalists on synthetic CT-ICH (BCIHM) and INSTANCE layouts: every slice listed with its haemorrhage
flag, patient-level folds (no patient in two folds, validation patients separate from training and test, the fold
argument honoured), upstream's slice-level folds only with a warning (and shown to leak patients)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.data import ich
from common.errors import InputNotFoundError, InvalidInputError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

SLICES = 6


def write_layout(root: Path, layout: str, patients: int = 12) -> Path:
    images, labels = ich.LAYOUTS[layout]
    for folder in (images, labels):
        (root / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    suffix = ".nii" if layout == "bcihm" else ".nii.gz"
    for p in range(patients):
        volume = rng.normal(40, 20, (8, 8, SLICES)).astype(np.int16)
        mask = np.zeros((8, 8, SLICES), np.uint8)
        mask[2:4, 2:4, 1 + p % 3 : 3 + p % 3] = 1  # two haemorrhage slices per patient
        name = f"{p + 49:03d}{suffix}"
        nib.save(nib.Nifti1Image(volume, np.eye(4)), str(root / images / name))
        nib.save(nib.Nifti1Image(mask, np.eye(4)), str(root / labels / name))
    return root


@pytest.mark.parametrize("layout", ["bcihm", "instance"])
def test_every_slice_is_listed_with_its_patient(tmp_path, layout):
    root = write_layout(tmp_path, layout)
    volumes = ich.volume_datalist(str(root), layout)
    assert [v["patient"] for v in volumes] == [f"{p + 49:03d}" for p in range(12)]
    slices = ich.slice_datalist(str(root), volumes)
    assert len(slices) == 12 * SLICES and sum(s["positive"] for s in slices) == 24
    first = [s for s in slices if s["patient"] == "049"]
    assert [s["slice"] for s in first if s["positive"]] == [1, 2]


@pytest.mark.parametrize("fold", range(4))
def test_patient_level_folds(tmp_path, fold):
    slices = ich.slice_datalist(str(tmp_path), ich.volume_datalist(str(write_layout(tmp_path, "bcihm")), "bcihm"))
    lists = ich.fold_datalists(slices, fold=fold, num_folds=4, val_fraction=0.2, seed=3)
    patients = {k: {s["patient"] for s in v} for k, v in lists.items()}
    assert not (patients["training"] & patients["test"]) and not (patients["validation"] & patients["test"])
    assert not (patients["training"] & patients["validation"])
    assert len(patients["test"]) == 3 and len(patients["validation"]) == 2 and len(patients["training"]) == 7
    assert all(s["positive"] for s in lists["training"])  # published: training on haemorrhage slices only
    assert len(lists["test"]) == 3 * SLICES  # every slice of the test patients
    folds = ich.patient_folds([s["patient"] for s in slices], 4, seed=3)
    assert {p for p, f in folds.items() if f == fold} == patients["test"]


def test_each_patient_is_tested_exactly_once_across_folds(tmp_path):
    slices = ich.slice_datalist(str(tmp_path), ich.volume_datalist(str(write_layout(tmp_path, "instance")), "instance"))
    tested = [p for f in range(5) for p in {s["patient"] for s in ich.fold_datalists(slices, f, 5)["test"]}]
    assert sorted(tested) == sorted({s["patient"] for s in slices})


def test_slice_level_folds_warn_and_leak(tmp_path):
    slices = ich.slice_datalist(str(tmp_path), ich.volume_datalist(str(write_layout(tmp_path, "bcihm")), "bcihm"))
    with pytest.warns(UserWarning, match="same patients appear in training and test"):
        lists = ich.fold_datalists(slices, fold=0, slice_level_folds=True)
    assert lists["validation"] == lists["test"]
    assert {s["patient"] for s in lists["training"]} & {s["patient"] for s in lists["test"]}


def test_layout_errors(tmp_path):
    with pytest.raises(InputNotFoundError, match="folder not found"):
        ich.volume_datalist(str(tmp_path), "bcihm")
    root = write_layout(tmp_path, "bcihm", patients=3)
    (root / "masks" / "049.nii").unlink()
    with pytest.raises(InvalidInputError, match="without both an image and a mask"):
        ich.volume_datalist(str(root), "bcihm")
    with pytest.raises(InvalidInputError, match="fold must be"):
        ich.fold_datalists([{"patient": "a", "positive": True}] * 3, fold=5)


def test_tool_writes_the_fold_and_its_patients(tmp_path):
    from ich_datalist import make

    root = write_layout(tmp_path / "data", "bcihm")
    out = make(str(root), str(tmp_path / "lists" / "fold1.json"), fold=1, num_folds=4)
    written = json.loads(Path(out).read_text())
    assert written["source"]["fold"] == 1 and len(written["source"]["patient_folds"]) == 12
    assert {s["patient"] for s in written["test"]} == {
        p for p, f in written["source"]["patient_folds"].items() if f == 1
    }
    assert (root / written["training"][0]["image"]).is_file()
