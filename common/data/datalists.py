"""Datalists (lists of ``{"image": path, "label": path}``) from common dataset layouts."""

from __future__ import annotations

import json
import os
from pathlib import Path

from common.errors import InputNotFoundError, InvalidInputError
from common.transforms.io import output_stem

_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def _cases(folder: Path) -> dict[str, str]:
    """``stem -> path`` for images and DICOM series folders directly under ``folder``."""
    cases = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() or entry.name.lower().endswith(_IMAGE_SUFFIXES):
            stem = output_stem(entry)
            cases[stem[:-5] if stem.endswith("_0000") else stem] = str(entry)
    return cases


def paired_datalist(dataset_dir: str, image_folder: str = "imagesTr", label_folder: str = "labelsTr") -> list[dict]:
    """Pair ``<dataset_dir>/<image_folder>/X`` with ``<dataset_dir>/<label_folder>/X`` by case name.

    Accepts the MSD/nnU-Net layout (``case_0000.nii.gz`` images are matched to ``case.nii.gz`` labels) and DICOM
    series folders as images. Raises FileNotFoundError for a missing folder and ValueError when a case has no
    label or nothing matches.
    """
    root = Path(dataset_dir)
    image_dir, label_dir = root / image_folder, root / label_folder
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise InputNotFoundError(
                f"dataset folder not found: {folder} (expected {image_folder}/ and {label_folder}/"
                f" under dataset_dir={dataset_dir})"
            )
    images, labels = _cases(image_dir), _cases(label_dir)
    missing = sorted(set(images) - set(labels))
    if missing:
        raise InvalidInputError(f"{len(missing)} image(s) in {image_dir} have no label in {label_dir}: {missing[:5]}")
    if not images:
        raise InvalidInputError(
            f"no images found in {image_dir} (looked for {', '.join(_IMAGE_SUFFIXES)} and DICOM folders)"
        )
    return [{"image": images[k], "label": labels[k]} for k in sorted(images)]


def load_datalist(datalist_file: str, key: str = "training", base_dir: str | None = None) -> list[dict]:
    """Decathlon-style JSON datalist (``{"training": [{"image": ..., "label": ...}]}``).

    Paths are relative to ``base_dir``."""
    from monai.data import load_decathlon_datalist

    if not os.path.isfile(datalist_file):
        raise InputNotFoundError(f"datalist file not found: {datalist_file}")
    with open(datalist_file) as f:
        if key not in json.load(f):
            raise InvalidInputError(f"datalist {datalist_file} has no '{key}' list")
    return load_decathlon_datalist(datalist_file, data_list_key=key, base_dir=base_dir)
