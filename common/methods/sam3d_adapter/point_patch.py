"""One patch per volume, centred on the point prompts: 3DSAM-adapter's promptable evaluation.

MONAI's sliding-window inferer covers the whole image with patches and hands every patch the same extra
arguments; 3DSAM-adapter instead runs one ``roi``-cube around the prompts, with the points moved into patch
coordinates, and writes the foreground probability back into an empty volume.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.utils import convert_to_dst_type

logger = logging.getLogger(__name__)

__all__ = ["PointPatchInferer", "patch_start", "crop_patch", "paste_patch"]


def _plain(x) -> torch.Tensor:
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


def patch_start(points: torch.Tensor, roi_size: int) -> torch.Tensor:
    """First voxel ``(3,)`` int64 of the ``roi_size`` cube centred on ``(max + min) // 2`` of ``(N, 3)`` points."""
    centre = torch.div(points.max(0).values + points.min(0).values, 2, rounding_mode="floor").long()
    return centre - roi_size // 2


def _overlap(start: torch.Tensor, roi_size: int, shape: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices of the image and of the patch that overlap, for a patch whose first voxel is ``start``."""
    image_sl, patch_sl = [], []
    for s, n in zip(start.tolist(), shape):
        lo, hi = max(s, 0), min(s + roi_size, n)
        image_sl.append(slice(lo, hi))
        patch_sl.append(slice(lo - s, hi - s))
    return tuple(image_sl), tuple(patch_sl)


def crop_patch(image: torch.Tensor, start: torch.Tensor, roi_size: int) -> torch.Tensor:
    """``(C, X, Y, Z)`` -> ``(C, roi, roi, roi)`` from ``start``, zero where the cube runs past the image."""
    patch = image.new_zeros((image.shape[0], roi_size, roi_size, roi_size))
    image_sl, patch_sl = _overlap(start, roi_size, image.shape[1:])
    all_channels = (slice(None),)
    patch[all_channels + patch_sl] = image[all_channels + image_sl]
    return patch


def paste_patch(patch: torch.Tensor, start: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``(C, roi, roi, roi)`` -> ``(C, *shape)`` zeros with the part of the patch that lies inside the image."""
    out = patch.new_zeros((patch.shape[0], *shape))
    image_sl, patch_sl = _overlap(start, patch.shape[1], shape)
    all_channels = (slice(None),)
    out[all_channels + image_sl] = patch[all_channels + patch_sl]
    return out


class PointPatchInferer(Inferer):
    """Foreground probability from one ``roi_size`` cube per volume centred on the point prompts (spec A10).

    Call: ``inferer(inputs, network, points, **kwargs)`` with ``inputs`` ``(B, C, X, Y, Z)`` (z-scored, so the zero
    padding past the border is the dataset mean, as upstream) and ``points`` ``(B, N, 3)`` voxel indices
    ``[x, y, z]`` of ``inputs``. Per item the cube ``[c - roi // 2, c - roi // 2 + roi)`` around
    ``c = (max + min) // 2`` of the points is cropped, ``network(patch, points=points - start, **kwargs)`` gives
    logits ``(B, 2, roi, roi, roi)``, and ``softmax(logits, 1)[:, 1]`` is written into a zero volume.

    With ``point_counts`` (e.g. ``(1, 3, 10)``) this is repeated with the first ``k`` points for each ``k`` (centre
    from those ``k``), giving ``(B, len(point_counts), X, Y, Z)``; otherwise all points give ``(B, 1, X, Y, Z)``.
    The result is a MetaTensor with the meta and transform trace of ``inputs`` (for ``Invertd``). The network
    runs under the caller's grad mode.

    Args:
        roi_size: cube edge in voxels, the network's input size (128 for 3DSAM-adapter).
        point_counts: numbers of leading points to evaluate with, one output channel each.

    Raises:
        ValueError: malformed shapes, fewer than ``max(point_counts)`` points, a point outside the image, or
            network output of the wrong shape.
    """

    def __init__(self, roi_size: int = 128, point_counts: Sequence[int] | None = None) -> None:
        super().__init__()
        if int(roi_size) < 1:
            raise ValueError(f"roi_size must be >= 1, got {roi_size}.")
        self.roi_size = int(roi_size)
        self.point_counts = None if point_counts is None else tuple(int(k) for k in point_counts)
        if self.point_counts is not None and (not self.point_counts or min(self.point_counts) < 1):
            raise ValueError(f"point_counts must be a non-empty list of counts >= 1, got {point_counts!r}.")

    def __call__(self, inputs: torch.Tensor, network, points: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        images = _plain(inputs)
        pts = _plain(points).to(images.device)
        if images.ndim != 5:
            raise ValueError(f"PointPatchInferer: inputs must be (B, C, X, Y, Z), got shape {tuple(images.shape)}.")
        if pts.ndim != 3 or pts.shape[0] != images.shape[0] or pts.shape[2] != 3:
            raise ValueError(
                f"PointPatchInferer: points must be (B, N, 3) with B = {images.shape[0]}, got shape {tuple(pts.shape)}."
            )
        counts = self.point_counts or (pts.shape[1],)
        if pts.shape[1] < max(counts):
            raise ValueError(
                f"PointPatchInferer: point_counts {counts} needs {max(counts)} points per image, got {pts.shape[1]}."
            )
        self._check_inside(pts, images.shape[2:])
        out = torch.cat([self._predict(images, network, pts[:, :k], *args, **kwargs) for k in counts], dim=1)
        return convert_to_dst_type(out, inputs, dtype=out.dtype)[0]

    @staticmethod
    def _check_inside(points: torch.Tensor, shape: Sequence[int]) -> None:
        upper = torch.as_tensor(list(shape), device=points.device) - 1
        bad = ~(torch.isfinite(points) & (points >= 0) & (points <= upper)).all(dim=-1)
        if bad.any():
            b, i = (int(v) for v in torch.nonzero(bad)[0])
            raise ValueError(
                f"PointPatchInferer: point #{i} {points[b, i].tolist()} of batch item {b} lies outside "
                f"the image of spatial shape {tuple(shape)} (voxel indices 0 to {upper.tolist()})."
            )

    def _predict(self, images: torch.Tensor, network, points: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """``(B, C, X, Y, Z)``, ``(B, k, 3)`` -> ``(B, 1, X, Y, Z)`` foreground probability."""
        logger.info(f"{len(points)} patch(es) of {self.roi_size}^3 voxels, {points.shape[1]} point(s) each: network")
        starts = [patch_start(p, self.roi_size) for p in points]
        patches = torch.stack([crop_patch(image, s, self.roi_size) for image, s in zip(images, starts)])
        shifted = torch.stack([p - s.to(p.dtype) for p, s in zip(points, starts)]).float()
        logits = network(patches, *args, points=shifted, **kwargs)
        expected = (images.shape[0], 2, self.roi_size, self.roi_size, self.roi_size)
        if tuple(logits.shape) != expected:
            raise ValueError(
                f"PointPatchInferer: the network must return logits (B, 2, roi, roi, roi) = {expected}, "
                f"got shape {tuple(logits.shape)}."
            )
        probs = torch.softmax(logits, dim=1)[:, 1:2]
        return torch.stack([paste_patch(p, s, images.shape[2:]) for p, s in zip(probs, starts)])
