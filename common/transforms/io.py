"""Saving predictions without leaving half-written files.

MONAI's ``SaveImaged`` writes straight to the final path, so an interrupted run can leave a truncated NIfTI that
viewers then open; :class:`AtomicSaveImaged` writes to a temporary file in the same folder and renames it into place
(:func:`common.atomic.atomic_path`). The array must already be on the input's grid (``Invertd``), so it is written as
is with its affine (MONAI's ``NibabelWriter`` would resample and reshape singleton axes).
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.utils import to_affine_nd
from monai.transforms import MapTransform

from common.atomic import atomic_path

_KNOWN_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".dcm", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def output_stem(source) -> str:
    """``/a/b/case_01.nii.gz -> case_01``; a DICOM series folder ``/a/series/`` -> ``series``."""
    name = Path(str(source).rstrip("/\\")).name
    for suffix in _KNOWN_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _write_png(array_xy: np.ndarray, path: str, scale: int | str) -> None:
    """A 2-D ``(X, Y)`` label array as an 8-bit grey PNG (rows along y), values times ``scale`` (``"auto"``: 255
    for a binary map, as BUSI's masks, else 1)."""
    from PIL import Image

    if array_xy.ndim != 2:
        raise ValueError(f"PNG output needs a 2-D array, got shape {array_xy.shape}")
    if scale == "auto":
        scale = 255 if array_xy.max(initial=0) <= 1 else 1
    values = np.rint(array_xy.astype(np.float64) * int(scale))
    if values.min() < 0 or values.max() > 255:
        raise ValueError(f"PNG output holds 0..255; the values times {scale} span {values.min()}..{values.max()}")
    Image.fromarray(values.astype(np.uint8).T.copy(), mode="L").save(path, format="PNG")


class AtomicSaveImaged(MapTransform):
    """Write ``keys`` as ``<output_dir>[/<subfolder>]/<image stem>[_<postfix>]<ext>`` with the tensor's affine.

    The array is channel-first ``(1, X, Y[, Z])`` with meta (``filename_or_obj``, ``affine``), e.g. after
    ``Invertd`` restored the input geometry; ``meta_key`` takes the meta from another item instead (its
    ``original_affine`` when present: the input's grid). ``output_ext``: ``".nii.gz"``/``".nii"`` (NIfTI),
    ``".png"`` (2-D, 8-bit grey, rows along y; values times ``png_scale``, default ``"auto"``: binary maps as 0/255), or
    ``"auto"``: PNG for raster inputs (``meta["source_format"] == "raster"``), NIfTI otherwise. ``subfolder_key``:
    an item key naming a sub-folder (e.g. a video clip, to mirror a ``GT/<clip>/`` tree; empty: none); an empty
    ``output_postfix`` keeps the input's stem as the name. Sets ``meta["saved_to"]`` to the written path.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str,
        output_postfix: str = "seg",
        output_ext: str = ".nii.gz",
        output_dtype=np.uint8,
        allow_missing_keys: bool = False,
        meta_key: str | None = None,
        png_scale: int | str = "auto",
        subfolder_key: str | None = None,
    ):
        super().__init__(keys, allow_missing_keys)
        self.output_dir, self.output_postfix, self.output_ext = output_dir, output_postfix, output_ext
        self.output_dtype, self.meta_key, self.png_scale = output_dtype, meta_key, png_scale
        self.subfolder_key = subfolder_key

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            source = d[self.meta_key] if self.meta_key else img
            meta = dict(source.meta) if isinstance(source, MetaTensor) else {}
            stem = output_stem(meta.get("filename_or_obj", key))
            ext = self.output_ext
            if ext == "auto":
                ext = ".png" if meta.get("source_format") == "raster" else ".nii.gz"
            folder = self.output_dir
            sub = "" if self.subfolder_key is None else str(d.get(self.subfolder_key) or "")
            if sub:
                if sub != Path(sub).name or sub in (".", ".."):
                    raise ValueError(f"'{self.subfolder_key}' must be one folder name, got {sub!r}")
                folder = os.path.join(folder, sub)
            os.makedirs(folder, exist_ok=True)
            name = f"{stem}_{self.output_postfix}" if self.output_postfix else stem
            final = os.path.join(folder, f"{name}{ext}")
            array = np.asarray(img.detach().cpu() if hasattr(img, "detach") else img)[0]
            affine = np.asarray(meta.get("original_affine" if self.meta_key else "affine", np.eye(4)), np.float64)
            with atomic_path(final) as tmp:
                if ext == ".png":
                    _write_png(array, tmp, self.png_scale)
                else:
                    if affine.shape != (4, 4):  # a 2D image has a 3 x 3 affine; NIfTI needs 4 x 4
                        affine = to_affine_nd(3, affine)
                    nib.save(nib.Nifti1Image(array.astype(self.output_dtype), affine), tmp)
            if isinstance(img, MetaTensor):
                img.meta["saved_to"] = final
            print(f"saved {key} to {final}")
        return d
