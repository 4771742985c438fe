"""Input checks with errors that name the file and key (MONAI's loaders fail less clearly)."""

from __future__ import annotations

import os

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from common.data.image_files import check_image_path
from common.errors import InputNotFoundError, InvalidInputError


class CheckInputPathsd(MapTransform):
    """Fail early if a path under ``keys`` is missing, empty, or not one whole image (a damaged or 4-D file, a folder
    that is not exactly one complete DICOM series: :func:`common.data.image_files.check_image_path`)."""

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            if not isinstance(path, (str, os.PathLike)):
                continue
            if not os.path.exists(path):
                raise InputNotFoundError(f"'{key}': input not found: {path}")
            if os.path.isdir(path) and not any(os.scandir(path)):
                raise InvalidInputError(f"'{key}': {path} is an empty folder, expected a DICOM series")
            check_image_path(path, key)
        return d


def _nifti_nonfinite_count(path) -> int:
    """Non-finite voxels of a floating-point NIfTI file as stored on disk (0 for integer files, read from the header).

    ITK < 6 turns every NaN/Inf of a NIfTI file into 0 while reading (``nifti_read_buffer``; fixed by ITK PR #6683),
    so after ``LoadImaged(reader="ITKReader")`` they can no longer be seen; nibabel reads them as stored.
    """
    import nibabel as nib
    import numpy as np

    try:
        image = nib.load(str(path))
    except Exception:  # a file only ITK can parse: nothing more to check
        return 0
    # nib.load is typed to return the FileBasedImage base; a .nii file gives a Nifti1/2Image or Cifti2Image,
    # which all have get_data_dtype() and dataobj
    if not np.issubdtype(image.get_data_dtype(), np.inexact):  # type: ignore[attr-defined]
        return 0
    return int((~np.isfinite(np.asanyarray(image.dataobj))).sum())  # type: ignore[attr-defined]


class CheckFinited(MapTransform):
    """Raise ValueError when an image under ``keys`` contains NaN or infinite voxels.

    For NIfTI sources the file itself is checked too, since ITK's reader silently zeroes non-finite voxels.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            x = torch.as_tensor(d[key])
            bad = int((~torch.isfinite(x)).sum()) if x.is_floating_point() else 0
            source = getattr(d[key], "meta", {}).get("filename_or_obj", "<in-memory image>")
            if not bad and str(source).lower().endswith((".nii", ".nii.gz")) and os.path.isfile(str(source)):
                bad = _nifti_nonfinite_count(source)
            if bad:
                raise InvalidInputError(
                    f"'{key}' from {source} has {bad} NaN/infinite voxels; fix or mask them before inference"
                )
        return d


class RequireSpatialDimsd(MapTransform):
    """Raise ValueError unless the channel-first image under ``keys`` is a volume of at least ``min_slices`` slices."""

    def __init__(self, keys: KeysCollection, min_slices: int = 2, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.min_slices = min_slices

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            shape = tuple(d[key].shape[1:])
            if len(shape) != 3 or shape[2] < self.min_slices:
                source = getattr(d[key], "meta", {}).get("filename_or_obj", "<in-memory image>")
                raise InvalidInputError(f"'{key}' from {source}: a 3D volume is required, got spatial shape {shape}")
        return d
