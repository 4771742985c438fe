"""Prompts that follow the image through spatial preprocessing.

Users give boxes in the voxel indices of the file as stored on disk (see ``common.transforms``).
After MONAI's spatial transforms (``Orientationd`` and friends) the array axes may be flipped or
permuted; :class:`FileBoxesToArrayd` maps the boxes through the image's affines
(``meta["original_affine"]`` at load time, ``MetaTensor.affine`` now), so the prompt stays on the
same anatomy. MONAI's ``ApplyTransformToPointsd`` works on points in world space; boxes need
validation against the file's shape and min/max re-ordering after flips, hence this transform.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from common.errors import InvalidInputError


def _source_name(image) -> str:
    meta = getattr(image, "meta", {}) or {}
    return str(meta.get("filename_or_obj", "<in-memory image>"))


def _file_and_array_grids(image):
    """``(source, file_shape, current_shape, file_affine, current_affine)`` of a loaded image; the affines are
    ``(ndim + 1, ndim + 1)`` arrays, or ``None`` for in-memory arrays without ``meta["original_affine"]``."""
    source = _source_name(image)
    meta = image.meta if isinstance(image, MetaTensor) else {}
    current_shape = list(image.shape[1:])
    file_shape = [int(s) for s in np.asarray(meta.get("spatial_shape", current_shape)).tolist()]
    if "original_affine" not in meta:
        return source, file_shape, current_shape, None, None
    ndim = len(current_shape)
    src = np.asarray(meta["original_affine"], dtype=np.float64)[: ndim + 1, : ndim + 1]
    dst = np.asarray(image.affine, dtype=np.float64)[: ndim + 1, : ndim + 1]
    return source, file_shape, current_shape, src, dst


def validate_boxes(boxes, spatial_shape: Sequence[int], source: str = "image", key: str = "boxes") -> np.ndarray:
    """Check user boxes against an image and return them as an ``(N, 2 * ndim)`` int64 array.

    Args:
        boxes: one box or a list of boxes: ``[x0, y0, x1, y1]`` or ``[x0, y0, z0, x1, y1, z1]``,
            inclusive voxel indices. A single-slice volume ``(X, Y, 1)`` (e.g. one DICOM file) counts as a 2D image:
            its 2D boxes are accepted as slice 0 and 3D boxes are rejected, as on a true 2D image.
        spatial_shape: the image's spatial shape as stored on disk, e.g. ``(X, Y, Z)``.
        source: file name used in error messages.
        key: name of the prompt key used in error messages.

    Raises:
        ValueError: wrong length, non-integer or non-finite values, inverted boxes, boxes outside the image,
            or 3D boxes on a 2D (or single-slice) image.
    """
    spatial_shape = [int(s) for s in spatial_shape]
    ndim = len(spatial_shape)
    arr = np.asarray(boxes.cpu() if isinstance(boxes, torch.Tensor) else boxes, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise InvalidInputError(f"'{key}' for {source}: expected a list of boxes, got shape {tuple(arr.shape)}.")
    width = arr.shape[1]
    is_2d_image = ndim == 2 or (ndim == 3 and spatial_shape[2] == 1)
    if width == 4 and ndim == 3:
        if not is_2d_image:
            raise InvalidInputError(
                f"'{key}' for {source}: 2D boxes [x0, y0, x1, y1] need a 2D image, but the image is a volume of shape "
                f"{tuple(spatial_shape)}; give [x0, y0, z0, x1, y1, z1] (z0 == z1 selects one slice)."
            )
        arr = np.concatenate([arr[:, :2], np.zeros((len(arr), 1)), arr[:, 2:], np.zeros((len(arr), 1))], axis=1)
    elif width == 6 and is_2d_image:
        raise InvalidInputError(
            f"'{key}' for {source}: the image is 2D (shape {tuple(spatial_shape)}) but a 3D box "
            "[x0, y0, z0, x1, y1, z1] was given; a volume is required for 3D boxes, use [x0, y0, x1, y1]."
        )
    elif width != 2 * ndim:
        raise InvalidInputError(
            f"'{key}' for {source}: each box needs {2 * ndim} values for an image of shape {tuple(spatial_shape)}, "
            f"got {width}."
        )
    if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
        raise InvalidInputError(f"'{key}' for {source}: box corners must be integer voxel indices, got {arr.tolist()}.")
    half = arr.shape[1] // 2
    for i, box in enumerate(arr):
        lo, hi = box[:half], box[half:]
        if np.any(lo > hi):
            raise InvalidInputError(
                f"'{key}' for {source}: box #{i} {box.astype(int).tolist()} is inverted (need x0<=x1, y0<=y1, z0<=z1)."
            )
        if np.any(lo < 0) or np.any(hi > np.asarray(spatial_shape) - 1):
            raise InvalidInputError(
                f"'{key}' for {source}: box #{i} {box.astype(int).tolist()} lies outside the image, whose voxel "
                f"indices run from 0 to {[s - 1 for s in spatial_shape]}."
            )
    return arr.astype(np.int64)


def map_boxes(boxes: np.ndarray, src_affine, dst_affine, dst_shape: Sequence[int]) -> np.ndarray:
    """Map ``(N, 2 * ndim)`` inclusive voxel boxes from one voxel grid to another through world space.

    Corners are mapped as voxel centres, re-ordered per axis (flips swap them), rounded and clipped
    to ``dst_shape``. Exact for orientation changes (flips and permutations).
    """
    src = np.asarray(src_affine, dtype=np.float64)
    dst = np.asarray(dst_affine, dtype=np.float64)
    ndim = src.shape[0] - 1
    to_dst = np.linalg.inv(dst) @ src
    out = []
    for box in boxes:
        lo, hi = box[:ndim], box[ndim:]
        corners = np.array(np.meshgrid(*[[lo[d], hi[d]] for d in range(ndim)], indexing="ij")).reshape(ndim, -1)
        mapped = (to_dst @ np.vstack([corners, np.ones((1, corners.shape[1]))]))[:ndim]
        new_lo = np.clip(np.round(mapped.min(axis=1)), 0, np.asarray(dst_shape) - 1)
        new_hi = np.clip(np.round(mapped.max(axis=1)), 0, np.asarray(dst_shape) - 1)
        out.append(np.concatenate([new_lo, new_hi]))
    return np.asarray(out, dtype=np.int64).reshape(len(boxes), 2 * ndim)


class FileBoxesToArrayd(MapTransform):
    """Validate boxes given in file voxel indices and map them into the current array of ``ref_key``.

    Place it after the spatial transforms (e.g. ``Orientationd``). Reads the image's
    ``meta["original_affine"]`` and ``meta["spatial_shape"]`` (set by ``LoadImaged``) and its current
    ``affine``; writes ``(N, 2 * ndim)`` int64 boxes and, if ``label_key`` is given, ``(N,)`` int64 labels
    (default ``1..N``). Without ``original_affine`` (in-memory arrays) the boxes are only validated.
    """

    def __init__(self, keys: KeysCollection = "boxes", ref_key: str = "image", label_key: str | None = "box_labels"):
        super().__init__(keys)
        self.ref_key = ref_key
        self.label_key = label_key

    def __call__(self, data):
        d = dict(data)
        source, file_shape, current_shape, src, dst = _file_and_array_grids(d[self.ref_key])
        for key in self.key_iterator(d):
            if d[key] is None:
                raise InvalidInputError(f"'{key}' for {source}: no boxes were given.")
            boxes = validate_boxes(d[key], file_shape, source=source, key=key)
            if src is not None and src.shape[0] - 1 == boxes.shape[1] // 2:
                boxes = map_boxes(boxes, src, dst, current_shape)
            d[key] = torch.as_tensor(boxes, dtype=torch.int64)
            if self.label_key is not None:
                labels = d.get(self.label_key)
                labels = np.arange(1, len(boxes) + 1) if labels is None else _numeric(labels)
                if (
                    labels is None
                    or labels.shape != (len(boxes),)
                    or not np.all(labels == np.round(labels))
                    or np.any(labels < 1)
                ):
                    raise InvalidInputError(
                        f"'{self.label_key}' for {source}: need one positive integer label per box "
                        f"({len(boxes)} boxes), got {np.asarray(d.get(self.label_key)).tolist()}."
                    )
                if np.any(labels > 255):
                    raise InvalidInputError(f"'{self.label_key}' for {source}: labels must be <= 255 (uint8 output).")
                d[self.label_key] = torch.as_tensor(labels.astype(np.int64))
        return d


def _numeric(values) -> np.ndarray | None:
    """``values`` as a 1-D float array, or ``None`` when they are not numbers (``"liver"``, ``True``, NaN)."""
    flat = np.atleast_1d(np.asarray(values.cpu() if isinstance(values, torch.Tensor) else values, dtype=object))
    if any(isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.number)) for v in flat.ravel()):
        return None
    array = flat.astype(np.float64)
    return array if np.all(np.isfinite(array)) else None


def orientationd(keys: KeysCollection, axcodes: str | None):
    """``Orientationd`` to ``axcodes`` (e.g. ``"LPS"``), or ``Identityd`` for ``None``/``""``/``"none"``
    (keep the file's array axes, as the reference MedSAM pipelines do)."""
    from monai.transforms import Identityd, Orientationd

    if axcodes is None or str(axcodes).lower() in ("", "none"):
        return Identityd(keys)
    return Orientationd(keys, axcodes=axcodes, labels=(("L", "R"), ("P", "A"), ("I", "S")))


def validate_points(points, spatial_shape: Sequence[int], source: str = "image", key: str = "points") -> np.ndarray:
    """Check user points ``[[x, y, z], ...]`` (voxel indices, may be fractional) against an image of
    ``spatial_shape`` and return them as an ``(N, ndim)`` float64 array.

    Raises:
        ValueError: no points, wrong number of coordinates, non-finite values, or a point outside the image.
    """
    spatial_shape = [int(s) for s in spatial_shape]
    ndim = len(spatial_shape)
    arr = np.asarray(points.cpu() if isinstance(points, torch.Tensor) else points, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] != ndim:
        raise InvalidInputError(
            f"'{key}' for {source}: expected a list of [x, y, z] voxel indices for an image of shape "
            f"{tuple(spatial_shape)}, got shape {tuple(arr.shape)}."
        )
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError(f"'{key}' for {source}: points must be finite, got {arr.tolist()}.")
    outside = [i for i, p in enumerate(arr) if np.any(p < 0) or np.any(p > np.asarray(spatial_shape) - 1)]
    if outside:
        i = outside[0]
        raise InvalidInputError(
            f"'{key}' for {source}: point #{i} {arr[i].tolist()} lies outside the image, whose voxel "
            f"indices run from 0 to {[s - 1 for s in spatial_shape]} ({len(outside)} point(s) outside)."
        )
    return arr


class FilePointsToArrayd(MapTransform):
    """Validate points given in file voxel indices and map them into the current array of ``ref_key``.

    Place it after the spatial transforms that change the grid (orientation, resampling); like
    :class:`FileBoxesToArrayd` it maps through ``meta["original_affine"]`` (load time) and the current ``affine``,
    here without rounding: a point keeps its world position, so resampling 3 mm -> 1 mm sends index 10 to 31.
    Writes float32 ``(N, ndim)``. Without ``original_affine`` (in-memory arrays) the points are only validated.
    """

    def __init__(self, keys: KeysCollection = "points", ref_key: str = "image"):
        super().__init__(keys)
        self.ref_key = ref_key

    def __call__(self, data):
        d = dict(data)
        source, file_shape, current_shape, src, dst = _file_and_array_grids(d[self.ref_key])
        for key in self.key_iterator(d):
            if d[key] is None:
                raise InvalidInputError(f"'{key}' for {source}: no points were given.")
            points = validate_points(d[key], file_shape, source=source, key=key)
            if src is not None:
                to_dst = np.linalg.inv(dst) @ src
                points = (to_dst[:-1, :-1] @ points.T).T + to_dst[:-1, -1]
                points = np.clip(points, 0, np.asarray(current_shape) - 1)  # float rounding at the borders
            d[key] = torch.as_tensor(points, dtype=torch.float32)
        return d
