"""Saving predictions without leaving half-written files.

MONAI's ``SaveImaged`` writes straight to the final path, so an interrupted run can leave a truncated
NIfTI that viewers then open; :class:`AtomicSaveImaged` writes to a temporary file in the same folder
with MONAI's ``NibabelWriter`` and renames it into place.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from monai.config import KeysCollection
from monai.data import MetaTensor, NibabelWriter
from monai.transforms import MapTransform

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

    def __init__(self, keys: KeysCollection, output_dir: str, output_postfix: str = "seg", output_ext: str = ".nii.gz",
                 output_dtype=np.uint8, resample: bool = False, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.output_dir, self.output_postfix, self.output_ext = output_dir, output_postfix, output_ext
        self.output_dtype, self.resample = output_dtype, resample

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            meta = dict(img.meta) if isinstance(img, MetaTensor) else {}
            stem = output_stem(meta.get("filename_or_obj", key))
            os.makedirs(self.output_dir, exist_ok=True)
            final = os.path.join(self.output_dir, f"{stem}_{self.output_postfix}{self.output_ext}")
            writer = NibabelWriter(output_dtype=self.output_dtype)
            writer.set_data_array(img, channel_dim=0)
            writer.set_metadata(meta_dict=meta, resample=self.resample)
            fd, tmp = tempfile.mkstemp(prefix=f".{stem}_", suffix=self.output_ext, dir=self.output_dir)
            os.close(fd)
            try:
                writer.write(tmp, verbose=False)
                os.replace(tmp, final)
            except BaseException:
                if os.path.exists(tmp):
                    os.remove(tmp)
                raise
            if isinstance(img, MetaTensor):
                img.meta["saved_to"] = final
            print(f"saved {key} to {final}")
        return d
