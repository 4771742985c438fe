"""Intracranial-haemorrhage CT datalists for SAMIHS: volumes, their axial slices, and patient-level folds.

Layouts (image and mask volumes of one patient share a file name; the patient id is the name without suffix):

* ``bcihm``: PhysioNet "CT-ICH" (Hssayeni, v1.3.1): ``ct_scans/<id>.nii[.gz]``, ``masks/<id>.nii[.gz]``, as the
  published ``utils/preprocess.py`` reads them;
* ``instance``: INSTANCE 2022 training set: ``data/<id>.nii.gz``, ``label/<id>.nii.gz``;
* any other pair of folders through ``image_folder`` / ``label_folder``.

Slices are the volumes' third array axis (axial), listed as ``{"image", "label", "slice", "patient", "positive"}``.

**Folds are per patient** (spec 3.5, addendum 3.3 items 2-4): upstream assigns its five folds per *slice*, so every
BCIHM patient and 98 of 100 INSTANCE patients sit in all five folds, it validates on the test fold (the test fold
picks the checkpoint), and its training ignores the fold argument. Here every patient is in exactly one fold, the
validation patients are carved from the training patients, and the fold given is the fold used. Upstream's
slice-level folds are available only as ``slice_level_folds=True``, with a warning. Training keeps the slices with
haemorrhage only (published); validation and test keep every slice.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import InputNotFoundError, InvalidInputError

__all__ = ["LAYOUTS", "fold_datalists", "patient_folds", "slice_datalist", "volume_datalist"]

LAYOUTS = {"bcihm": ("ct_scans", "masks"), "instance": ("data", "label")}
_SUFFIXES = (".nii.gz", ".nii")


def _stem(path: Path) -> str | None:
    name = path.name
    return next((name[: -len(s)] for s in _SUFFIXES if name.lower().endswith(s)), None)


def volume_datalist(
    dataset_dir: str, layout: str = "bcihm", image_folder: str | None = None, label_folder: str | None = None
) -> list[dict]:
    """``[{"image", "label", "patient"}]`` per patient (paths relative to ``dataset_dir``), sorted by patient."""
    if layout not in LAYOUTS and (image_folder is None or label_folder is None):
        raise InvalidInputError(f"unknown layout {layout!r}: expected one of {sorted(LAYOUTS)} or both folder names")
    default_images, default_labels = LAYOUTS.get(layout, (None, None))
    root = Path(dataset_dir)
    folders = [root / (image_folder or default_images or ""), root / (label_folder or default_labels or "")]
    for folder in folders:
        if not folder.is_dir():
            raise InputNotFoundError(f"{layout} layout: folder not found: {folder}")
    images, labels = ({stem: p for p in sorted(f.iterdir()) if (stem := _stem(p))} for f in folders)
    unmatched = sorted(set(images) ^ set(labels))
    if unmatched:
        raise InvalidInputError(f"{root}: patients without both an image and a mask: {unmatched[:5]}")
    if not images:
        raise InvalidInputError(f"{folders[0]}: no NIfTI volumes ({', '.join(_SUFFIXES)})")
    return [
        {"image": str(images[p].relative_to(root)), "label": str(labels[p].relative_to(root)), "patient": str(p)}
        for p in sorted(images)
    ]


def slice_datalist(dataset_dir: str, volumes: Sequence[dict]) -> list[dict]:
    """Every axial slice of ``volumes`` (reading each mask's header and data) with ``positive`` = any haemorrhage."""
    import nibabel as nib

    items = []
    for volume in volumes:
        image: Any = nib.load(str(Path(dataset_dir) / volume["label"]))  # a NIfTI image (typed FileBasedImage)
        mask = np.asarray(image.dataobj)
        if mask.ndim != 3:
            raise InvalidInputError(f"{volume['label']}: expected a 3-D mask volume, got shape {mask.shape}")
        positive = (mask > 0).any(axis=(0, 1))
        items += [{**volume, "slice": k, "positive": bool(positive[k])} for k in range(mask.shape[2])]
    return items


def patient_folds(patients: Sequence[str], num_folds: int = 5, seed: int = 0) -> dict[str, int]:
    """Patient -> fold, a seeded shuffle cut into ``num_folds`` near-equal parts."""
    unique = sorted(set(patients))
    if not 2 <= num_folds <= len(unique):
        raise InvalidInputError(f"num_folds must be 2..{len(unique)} (the number of patients), got {num_folds}")
    order = np.random.default_rng(seed).permutation(len(unique))
    return {unique[i]: rank % num_folds for rank, i in enumerate(order)}


def fold_datalists(
    slices: Sequence[dict],
    fold: int = 0,
    num_folds: int = 5,
    val_fraction: float = 0.1,
    seed: int = 0,
    slice_level_folds: bool = False,
) -> dict[str, list[dict]]:
    """``{"training", "validation", "test"}`` slice lists for ``fold`` (see the module docstring).

    ``val_fraction`` of the training-fold patients (at least one) become validation patients. With
    ``slice_level_folds`` (upstream's leaking split) each slice gets a seeded random fold and validation is the test
    fold, as published.
    """
    if not 0 <= fold < num_folds:
        raise InvalidInputError(f"fold must be 0..{num_folds - 1}, got {fold}")
    if slice_level_folds:
        warnings.warn(
            "slice_level_folds=True reproduces upstream SAMIHS: the same patients appear in training and test, and "
            "the test fold picks the checkpoint; results are not a patient-level evaluation",
            stacklevel=2,
        )
        folds = np.random.default_rng(seed).integers(0, num_folds, len(slices))
        test = [s for s, f in zip(slices, folds) if f == fold]
        train = [s for s, f in zip(slices, folds) if f != fold and s["positive"]]
        return {"training": train, "validation": test, "test": test}
    assignment = patient_folds([s["patient"] for s in slices], num_folds, seed)
    training_patients = sorted(p for p, f in assignment.items() if f != fold)
    n_val = max(1, int(round(val_fraction * len(training_patients))))
    if n_val >= len(training_patients):
        raise InvalidInputError(
            f"{len(training_patients)} training patient(s): too few to carve {n_val} for validation"
        )
    val_patients = set(np.random.default_rng(seed + 1).choice(training_patients, n_val, replace=False).tolist())
    out: dict[str, list[dict]] = {"training": [], "validation": [], "test": []}
    for s in slices:
        if assignment[s["patient"]] == fold:
            out["test"].append(s)
        elif s["patient"] in val_patients:
            out["validation"].append(s)
        elif s["positive"]:
            out["training"].append(s)
    return out
