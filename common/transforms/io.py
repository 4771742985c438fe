"""Saving predictions without leaving half-written files.

MONAI's ``SaveImaged`` writes straight to the final path, so an interrupted run can leave a truncated
NIfTI that viewers then open; :class:`AtomicSaveImaged` writes to a temporary file in the same folder
and renames it into place. The array must already be on the input's grid (``Invertd``), so it is written as is
with its affine (MONAI's ``NibabelWriter`` would resample and reshape singleton axes).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.utils import to_affine_nd
from monai.transforms import MapTransform

_UMASK = os.umask(0)
os.umask(_UMASK)
_KNOWN_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".dcm", ".png", ".jpg", ".tif", ".tiff")


def output_stem(source) -> str:
    """``/a/b/case_01.nii.gz -> case_01``; a DICOM series folder ``/a/series/`` -> ``series``."""
    name = Path(str(source).rstrip("/\\")).name
    for suffix in _KNOWN_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


class AtomicSaveImaged(MapTransform):
    """Write ``keys`` as ``<output_dir>/<image stem>_<postfix><ext>`` (NIfTI) with the tensor's affine.

    The array is channel-first ``(1, X, Y[, Z])`` with meta (``filename_or_obj``, ``affine``), e.g. after
    ``Invertd`` restored the input geometry. Sets ``meta["saved_to"]`` to the written path.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str,
        output_postfix: str = "seg",
        output_ext: str = ".nii.gz",
        output_dtype=np.uint8,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.output_dir, self.output_postfix, self.output_ext = output_dir, output_postfix, output_ext
        self.output_dtype = output_dtype

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            meta = dict(img.meta) if isinstance(img, MetaTensor) else {}
            stem = output_stem(meta.get("filename_or_obj", key))
            os.makedirs(self.output_dir, exist_ok=True)
            final = os.path.join(self.output_dir, f"{stem}_{self.output_postfix}{self.output_ext}")
            array = np.asarray(img.detach().cpu() if hasattr(img, "detach") else img)[0].astype(self.output_dtype)
            affine = np.asarray(meta.get("affine", np.eye(4)), dtype=np.float64)
            if affine.shape != (4, 4):  # a 2D image has a 3 x 3 affine; NIfTI needs 4 x 4
                affine = to_affine_nd(3, affine)
            nifti = nib.Nifti1Image(array, affine)
            fd, tmp = tempfile.mkstemp(prefix=f".{stem}_", suffix=self.output_ext, dir=self.output_dir)
            os.close(fd)
            os.chmod(tmp, 0o666 & ~_UMASK)
            try:
                nib.save(nifti, tmp)
                os.replace(tmp, final)
            except BaseException:
                if os.path.exists(tmp):
                    os.remove(tmp)
                raise
            if isinstance(img, MetaTensor):
                img.meta["saved_to"] = final
            print(f"saved {key} to {final}")
        return d
