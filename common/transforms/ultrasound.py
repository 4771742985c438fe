"""Ultrasound frames as scanners and datasets store them, read as one grey channel.

Raster files (PNG, JPEG, BMP, TIFF) are read with Pillow and converted to grey with Pillow's ``"L"`` rule
(ITU-R 601-2 luma, ``0.299 R + 0.587 G + 0.114 B``), the rule of OpenCV's grey read used by SAMUS. DICOM files are
read with pydicom: the palette applied (``PALETTE COLOR``), YCbCr converted to RGB, ``MONOCHROME1`` inverted, then
the same luma; a multi-frame file needs ``frame``. 2-D (or one-slice) NIfTI frames keep their affine. Values are
scaled to 0..255 (16-bit palettes and grey by their bit depth; NIfTI other than uint8 by its min and max). Arrays
follow the project's axis order ``(1, X, Y)`` (X = column, Y = row, as MONAI's ``PILReader`` gives them), so a point
``(x, y)`` read off a viewer indexes ``[0, x, y]``.

The meta data keeps the source, its format (``"raster"``, ``"dicom"`` or ``"nifti"``), the original ``(X, Y)`` size
and an affine (NIfTI's own; pixel spacing in mm for DICOM from ``PixelSpacing`` or the ultrasound regions; identity
for raster files), so outputs can be written on the input's grid (:class:`~common.transforms.io.AtomicSaveImaged`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from common.errors import InputNotFoundError, InvalidInputError

__all__ = ["NIFTI_SUFFIXES", "RASTER_SUFFIXES", "LoadMaskd", "LoadUltrasoundd", "read_mask", "read_ultrasound"]

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
_LUMA = np.array([0.299, 0.587, 0.114])
_CM_UNITS = 3  # PhysicalUnitsXDirection code for centimetres


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float64) @ _LUMA


def _is_dicom(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def _dicom_spacing_mm(ds) -> tuple[float, float]:
    """(column, row) pixel spacing in mm: ``PixelSpacing`` (row, column order in DICOM), else the ultrasound
    regions when they agree and are in cm, else 1 mm."""
    if "PixelSpacing" in ds:
        row, col = (float(v) for v in ds.PixelSpacing)
        return col, row
    regions = [r for r in ds.get("SequenceOfUltrasoundRegions", []) if r.get("PhysicalUnitsXDirection") == _CM_UNITS]
    deltas = {(float(r.PhysicalDeltaX), float(r.PhysicalDeltaY)) for r in regions if "PhysicalDeltaX" in r}
    if len(deltas) == 1:
        dx, dy = deltas.pop()
        return abs(dx) * 10.0, abs(dy) * 10.0
    return 1.0, 1.0


def _dicom_grey(path: Path, frame: int | None) -> tuple[np.ndarray, tuple[float, float]]:
    import pydicom
    from pydicom.pixel_data_handlers.util import apply_color_lut, convert_color_space

    try:
        ds = pydicom.dcmread(str(path))
        pixels = ds.pixel_array
    except Exception as e:  # pydicom raises many types for broken files
        raise InvalidInputError(f"{path}: not a readable DICOM image ({type(e).__name__}: {e})") from e
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    samples = int(ds.get("SamplesPerPixel", 1))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        if frame is None or not 0 <= frame < frames:
            raise InvalidInputError(f"{path}: has {frames} frames; choose one with frame=0..{frames - 1} (got {frame})")
        pixels = pixels[frame]
    elif frame not in (None, 0):
        raise InvalidInputError(f"{path}: a single-frame image has no frame {frame}")
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, ds)
        grey = _luma(rgb) * 255.0 / (255.0 if rgb.dtype == np.uint8 else 65535.0)
    elif samples == 3:
        if photometric.startswith("YBR") and int(pydicom.__version__.split(".")[0]) < 3:
            pixels = convert_color_space(pixels, photometric, "RGB")  # pydicom >= 3 converts in pixel_array
        grey = _luma(pixels) * 255.0 / (2 ** int(ds.BitsStored) - 1)
    elif samples == 1:
        grey = pixels.astype(np.float64) * 255.0 / (2 ** int(ds.BitsStored) - 1)
        if photometric == "MONOCHROME1":
            grey = 255.0 - grey
    else:
        raise InvalidInputError(f"{path}: {samples} samples per pixel ({photometric}) is not a supported image")
    return grey, _dicom_spacing_mm(ds)


def _nifti_grey(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A 2-D (or one-slice) NIfTI frame as ``(rows, columns)`` grey and its 4 x 4 affine; 8-bit values as stored,
    other types min-max scaled to 0..255."""
    import nibabel as nib

    try:
        image: Any = nib.load(str(path))  # a Nifti1Image / Nifti2Image (nibabel types it as FileBasedImage)
        data = np.asarray(image.dataobj)
    except Exception as e:  # nibabel raises several types for broken files
        raise InvalidInputError(f"{path}: not a readable NIfTI image ({type(e).__name__}: {e})") from e
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[:, :, 0]
    if data.ndim != 2:
        raise InvalidInputError(f"{path}: expected a 2-D frame (X, Y) or (X, Y, 1), got shape {data.shape}")
    grey = data.astype(np.float64)
    if data.dtype != np.uint8:
        low, high = grey.min(), grey.max()
        grey = (grey - low) * (255.0 / (high - low)) if high > low else np.zeros_like(grey)
    return grey.T, np.asarray(image.affine, dtype=np.float64)


def _raster(path: Path, mode: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert(mode))
    except (UnidentifiedImageError, OSError) as e:
        raise InvalidInputError(f"{path}: not a readable image ({e})") from e


def _check_path(path) -> Path:
    p = Path(str(path))
    if not p.is_file():
        raise InputNotFoundError(f"ultrasound image not found: {p}")
    return p


def read_ultrasound(path, frame: int | None = None) -> MetaTensor:
    """One grey frame ``(1, X, Y)`` float32 in 0..255 with meta (see the module docstring)."""
    p = _check_path(path)
    affine = None
    if _is_dicom(p):
        grey_hw, spacing, kind = *_dicom_grey(p, frame), "dicom"
    elif p.suffix.lower() in RASTER_SUFFIXES:
        grey_hw, spacing, kind = _raster(p, "L").astype(np.float64), (1.0, 1.0), "raster"
    elif p.name.lower().endswith(NIFTI_SUFFIXES):
        (grey_hw, affine), spacing, kind = _nifti_grey(p), (1.0, 1.0), "nifti"
    else:
        raise InvalidInputError(
            f"{p}: neither a DICOM file (no 'DICM' marker), a NIfTI file ({', '.join(NIFTI_SUFFIXES)}) nor a raster "
            f"image ({', '.join(RASTER_SUFFIXES)})"
        )
    if grey_hw.ndim != 2 or min(grey_hw.shape) < 2:
        raise InvalidInputError(f"{p}: expected one 2-D frame, got pixel array of shape {grey_hw.shape}")
    if not np.isfinite(grey_hw).all():
        raise InvalidInputError(f"{p}: pixel data holds non-finite values")
    if affine is None:
        affine = np.diag([spacing[0], spacing[1], 1.0])
    meta = {
        "filename_or_obj": str(p),
        "source_format": kind,
        "spatial_shape": np.array(grey_hw.shape[::-1]),
        "original_affine": affine.copy(),
        "affine": torch.as_tensor(affine),
        "original_channel_dim": "no_channel",
    }
    return MetaTensor(torch.as_tensor(grey_hw.T.copy(), dtype=torch.float32)[None], meta=meta)


def read_mask(paths) -> MetaTensor:
    """Mask file(s) ``(1, X, Y)`` uint8: the union of the files' non-zero pixels as 1 (BUSI's ``_mask.png``,
    ``_mask_1.png`` ... of one image), or, for one file, its values as stored (class ids of a multi-class map)."""
    files = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not files:
        raise InvalidInputError("no mask file given")
    arrays = [_raster(_check_path(f), "L") for f in files]
    if len({a.shape for a in arrays}) != 1:
        raise InvalidInputError(f"masks of one image differ in size: {[a.shape for a in arrays]} ({files})")
    merged = arrays[0] if len(arrays) == 1 else np.any(np.stack(arrays) > 0, axis=0).astype(np.uint8)
    meta = {"filename_or_obj": str(files[0]), "spatial_shape": np.array(merged.shape[::-1])}
    return MetaTensor(torch.as_tensor(merged.T.copy())[None], meta=meta)


class LoadUltrasoundd(MapTransform):
    """:func:`read_ultrasound` for ``keys`` (file paths), with ``frame`` from ``frame_key`` of the item if present."""

    def __init__(self, keys: KeysCollection, frame_key: str = "frame", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.frame_key = frame_key

    def __call__(self, data):
        d = dict(data)
        frame = d.get(self.frame_key)
        for key in self.key_iterator(d):
            d[key] = read_ultrasound(d[key], None if frame is None else int(frame))
        return d


class LoadMaskd(MapTransform):
    """:func:`read_mask` for ``keys`` (a path or a list of paths per item)."""

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = read_mask(d[key])
        return d
