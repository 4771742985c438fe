"""Checks of an image file or DICOM folder before a reader sees it, so a damaged input never becomes an output.

ITK reads a truncated ``.nii.gz`` without complaint (the missing voxels come back as zeros), merges a folder of
two DICOM series into one volume, and stacks a series with a missing or truncated slice as if it were whole.
:func:`check_image_path` refuses these with :class:`~common.errors.InvalidInputError` naming the file:

* any file: empty; not an image ITK can read; more than 3 spatial dimensions; a zero-size axis (a video file is
  only checked for being empty: its decoder reports damage);
* NIfTI (``.nii``, ``.nii.gz``): fewer voxel bytes than the header declares (the gzip stream is decompressed once,
  which also checks its CRC);
* a DICOM folder: no DICOM image files; images of several series (listed with their descriptions); a slice file
  whose pixel data is shorter than its header declares or whose compressed frame lacks its end marker; slice
  positions along the slice normal that repeat or leave a gap (a step over 1.5x the median step).
"""

from __future__ import annotations

import gzip
import os
import warnings
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np

from common.errors import InvalidInputError

__all__ = ["check_dicom_folder", "check_image_file", "check_image_path"]

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg")
_GAP_FACTOR = 1.5  # a step over this multiple of the median step is a missing slice
_JPEG_FAMILY = "1.2.840.10008.1.2.4."  # JPEG, JPEG-LS and JPEG 2000 transfer syntaxes: codestreams end with FFD9


def check_image_path(path: str | os.PathLike, key: str = "image") -> None:
    """Check a file (:func:`check_image_file`) or a DICOM series folder (:func:`check_dicom_folder`)."""
    if os.path.isdir(path):
        check_dicom_folder(path, key)
    else:
        check_image_file(path, key)


def check_image_file(path: str | os.PathLike, key: str = "image") -> None:
    """Refuse an empty, unreadable, truncated, zero-size or 4-D image file (module docstring)."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise InvalidInputError(f"'{key}': {path} is an empty file")
    if path.name.lower().endswith(_VIDEO_SUFFIXES):
        return
    if path.name.lower().endswith(_NIFTI_SUFFIXES):
        shape = _check_nifti(path, key)
    else:
        shape = _itk_shape(path, key)
    if len(shape) > 3:
        raise InvalidInputError(
            f"'{key}': {path} is a {len(shape)}-D image (shape {shape}); give one 3-D volume or 2-D image"
        )
    if 0 in shape:
        raise InvalidInputError(f"'{key}': {path} has a zero-size axis (shape {shape})")


def _check_nifti(path: Path, key: str) -> tuple[int, ...]:
    """The NIfTI file's shape; raises when its voxel data is shorter than the header declares or does not inflate."""
    import nibabel as nib

    try:
        image = nib.load(str(path))
    except Exception as e:
        raise InvalidInputError(f"'{key}': {path} is not a readable NIfTI file ({type(e).__name__}: {e})") from e
    header = image.header  # a Nifti1/2 header: get_data_offset and get_data_dtype exist
    shape = tuple(int(n) for n in image.shape)  # type: ignore[attr-defined]
    voxels = int(np.prod(shape, dtype=np.int64))
    needed = int(header.get_data_offset()) + voxels * header.get_data_dtype().itemsize  # type: ignore[attr-defined]
    try:
        available = _inflated_size(path) if path.name.lower().endswith(".gz") else path.stat().st_size
    except (EOFError, OSError, zlib.error) as e:
        raise InvalidInputError(f"'{key}': {path} is damaged: its gzip stream does not inflate ({e})") from e
    if available < needed:
        raise InvalidInputError(
            f"'{key}': {path} is truncated: {available:,} bytes of image data and header, the header declares "
            f"{needed:,} (shape {shape})"
        )
    return shape


def _inflated_size(path: Path) -> int:
    """Bytes of the decompressed gzip file; raises ``EOFError`` (cut short) or ``BadGzipFile``/``zlib.error``."""
    total = 0
    with gzip.open(path, "rb") as stream:
        while block := stream.read(1 << 22):
            total += len(block)
    return total


def _itk_shape(path: Path, key: str) -> tuple[int, ...]:
    """The image's size (ITK order) from its header, read by SimpleITK without the pixels."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise InvalidInputError(
            f"'{key}': {path} is not an image file ITK can read (NIfTI, NRRD, MHA, DICOM, PNG, JPEG, TIFF, ...)"
        ) from e
    return tuple(int(n) for n in reader.GetSize())


def check_dicom_folder(folder: str | os.PathLike, key: str = "image") -> None:
    """Refuse a folder that is not exactly one whole DICOM image series (module docstring)."""
    import pydicom
    from pydicom import Dataset
    from pydicom.errors import InvalidDicomError

    folder = Path(folder)
    series: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    without_pixels: list[tuple[Path, Dataset]] = []
    others: list[str] = []
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            with warnings.catch_warnings():  # pydicom warns about a cut file; the checks below say it plainly
                warnings.simplefilter("ignore")
                dataset = pydicom.dcmread(file)
        except (InvalidDicomError, EOFError, OSError, ValueError) as e:
            if _has_dicom_preamble(file):
                raise InvalidInputError(f"'{key}': {file} is a damaged DICOM file ({type(e).__name__}: {e})") from e
            others.append(file.name)
            continue
        if "PixelData" in dataset:
            series[str(dataset.get("SeriesInstanceUID", "")) or "<no SeriesInstanceUID>"].append((file, dataset))
        else:
            without_pixels.append((file, dataset))
    if not series:
        found = f"; it holds {len(others)} other file(s), e.g. {others[0]}" if others else ""
        raise InvalidInputError(f"'{key}': {folder} holds no DICOM image files{found}")
    image_classes = {str(d.get("SOPClassUID", "")) for items in series.values() for _, d in items}
    for file, incomplete in without_pixels:  # an image file cut short loses its pixel data (and maybe more)
        if str(incomplete.get("SOPClassUID", "")) in image_classes:
            raise InvalidInputError(f"'{key}': {file} is truncated: it has no complete pixel data")
    if len(series) > 1:
        listed = "; ".join(
            f"{uid} ({len(items)} files, '{items[0][1].get('SeriesDescription', '')}')" for uid, items in series.items()
        )
        raise InvalidInputError(
            f"'{key}': {folder} holds {len(series)} DICOM series ({listed}); copy the series to segment into a "
            "folder of its own"
        )
    slices = next(iter(series.values()))
    for file, image in slices:
        _check_pixel_data(file, image, key)
    _check_slice_positions(folder, slices, key)


def _has_dicom_preamble(file: Path) -> bool:
    with open(file, "rb") as handle:
        return handle.read(132)[128:] == b"DICM"


def _check_pixel_data(file: Path, dataset, key: str) -> None:
    """Native pixel data at least as long as rows x columns x samples x bytes x frames; JPEG-family frames ending
    with their end-of-codestream marker (a cut file loses it)."""
    syntax = str(getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", ""))
    element = dataset["PixelData"]
    if not element.is_undefined_length:  # native (uncompressed)
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        needed = (
            int(dataset.Rows)
            * int(dataset.Columns)
            * int(dataset.get("SamplesPerPixel", 1))
            * int(dataset.BitsAllocated)
            // 8
            * frames
        )
        if len(element.value) < needed:
            raise InvalidInputError(
                f"'{key}': {file} is truncated: {len(element.value):,} bytes of pixel data, {needed:,} expected"
            )
        return
    if syntax.startswith(_JPEG_FAMILY):
        fragments = _fragments(element.value)
        if len(fragments) < 2 or not fragments[-1].rstrip(b"\x00").endswith(b"\xff\xd9"):
            raise InvalidInputError(f"'{key}': {file} is truncated: its compressed frame has no end marker")


def _fragments(value: bytes) -> list[bytes]:
    """The items of encapsulated pixel data (basic offset table first), as far as they are complete."""
    items, offset = [], 0
    while offset + 8 <= len(value) and value[offset : offset + 4] == b"\xfe\xff\x00\xe0":  # item tag (FFFE,E000)
        length = int.from_bytes(value[offset + 4 : offset + 8], "little")
        if offset + 8 + length > len(value):
            break  # cut inside this item
        items.append(value[offset + 8 : offset + 8 + length])
        offset += 8 + length
    return items


def _check_slice_positions(folder: Path, slices: list, key: str) -> None:
    """Positions along the slice normal (ImagePositionPatient . (row x column cosines)): no repeats, no gaps."""
    if len(slices) < 2 or any("ImagePositionPatient" not in d or "ImageOrientationPatient" not in d for _, d in slices):
        return  # a single image, or no patient geometry (secondary capture): nothing to compare
    cosines = np.asarray(slices[0][1].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(cosines[:3], cosines[3:])
    positions = sorted(
        (float(np.dot(np.asarray(d.ImagePositionPatient, np.float64), normal)), f.name) for f, d in slices
    )
    steps = np.diff([p for p, _ in positions])
    median = float(np.median(steps))
    repeated = [(positions[i][1], positions[i + 1][1]) for i, step in enumerate(steps) if step < 1e-3 * max(median, 1)]
    if repeated:
        a, b = repeated[0]
        raise InvalidInputError(
            f"'{key}': {folder}: {len(repeated)} slice position(s) repeat ({a} and {b} lie at the same position); "
            "is a series in the folder twice?"
        )
    gaps = [i for i, step in enumerate(steps) if step > _GAP_FACTOR * median]
    if gaps:
        i = gaps[0]
        raise InvalidInputError(
            f"'{key}': {folder}: a gap of {steps[i]:.3g} mm between {positions[i][1]} and {positions[i + 1][1]} "
            f"(the slices are {median:.3g} mm apart): slices are missing"
        )
