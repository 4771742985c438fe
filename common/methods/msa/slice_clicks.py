"""Medical SAM Adapter prompts: one click per axial slice on one structure, as a click map.

The published code picks a random foreground pixel per slice (so each slice may target another organ), gives it
in (row, column) order instead of SAM's (x, y), never rescales it to the encoder size, and labels every click
positive, even the random point on a slice without foreground. Here one structure is chosen per crop, every slice
gets one click on it (label 1) or, where the slice does not contain it, one click elsewhere (label 0); the clicks
are stored as a map with the image's shape (``+1`` / ``-1`` at the clicked voxels), so they follow the image
through spatial transforms and sliding windows, and :class:`common.networks.msa.MSAVolume` reads them per slice.

Evaluation uses the same prompts for every structure, reproducibly (:class:`SliceClicksPerStructured`); inference
turns user points into a click map (:class:`PointsToClickMapd`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable

from common.errors import InvalidInputError

__all__ = ["PointsToClickMapd", "RandSliceClicksd", "SliceClicksPerStructured", "slice_click_map"]


def _check_label(label: torch.Tensor, key: str, owner: str) -> None:
    if label.ndim != 4 or label.shape[0] != 1:
        raise ValueError(f"{owner}: '{key}' must be (1, X, Y, Z), got {tuple(label.shape)}")


def slice_click_map(label: torch.Tensor, value: int, rng: np.random.RandomState) -> torch.Tensor:
    """Click map ``(1, X, Y, Z)`` float32 for structure ``value`` of an integer label ``(1, X, Y, Z)``: per slice
    along Z, ``+1`` at a uniformly drawn voxel of the structure, or ``-1`` at a uniformly drawn voxel of a slice
    that does not contain it."""
    _, x, y, z = label.shape
    clicks = torch.zeros((1, x, y, z), dtype=torch.float32, device=label.device)
    inside = label[0] == value
    for k in range(z):
        voxels = torch.nonzero(inside[:, :, k])
        if len(voxels):
            i, j = voxels[rng.randint(len(voxels))].tolist()
            clicks[0, i, j, k] = 1.0
        else:
            clicks[0, rng.randint(x), rng.randint(y), k] = -1.0
    return clicks


class RandSliceClicksd(Randomizable, MapTransform):
    """Choose one structure of an integer label ``(1, X, Y, Z)`` and click every slice (see the module).

    The structure is drawn uniformly among the ``labels`` values present in the crop (default: every value > 0
    present); a crop without any gets a random one of ``labels`` (all clicks negative, empty target) or, without
    ``labels``, raises. Writes ``click_key`` (the click map), ``target_key`` (``(1, X, Y, Z)`` float32 binary mask of
    the structure) and ``value_key`` (its label value). Reproducible under ``set_random_state``.
    """

    def __init__(
        self,
        label_key: str = "label",
        click_key: str = "clicks",
        target_key: str = "target",
        value_key: str = "structure",
        labels: Sequence[int] | None = None,
    ) -> None:
        MapTransform.__init__(self, keys=label_key)
        self.label_key, self.click_key, self.target_key, self.value_key = label_key, click_key, target_key, value_key
        self.labels = None if labels is None else [int(v) for v in labels]
        if self.labels is not None and (not self.labels or min(self.labels) < 1):
            raise ValueError(f"labels must be a non-empty list of structure values >= 1, got {labels!r}")
        self._value = 0

    def randomize(self, present: Sequence[int]) -> None:
        candidates = [v for v in present if self.labels is None or v in self.labels] or self.labels
        if not candidates:  # __call__ raises its own error for such a label before getting here
            raise ValueError("RandSliceClicksd: no structure to click on (none present and no labels given)")
        self._value = int(candidates[self.R.randint(len(candidates))])

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor | int]:
        d: dict[Hashable, torch.Tensor | int] = dict(data)
        label = torch.as_tensor(d[self.label_key])
        _check_label(label, self.label_key, "RandSliceClicksd")
        present = [int(v) for v in torch.unique(label).tolist() if v > 0]
        if not present and self.labels is None:
            source = getattr(d[self.label_key], "meta", {}).get("filename_or_obj", "<in-memory label>")
            raise ValueError(f"RandSliceClicksd: '{self.label_key}' of {source} has no structure to click on")
        self.randomize(present)
        d[self.click_key] = slice_click_map(label, self._value, self.R)
        d[self.target_key] = (label == self._value).float()
        d[self.value_key] = self._value
        return d


class SliceClicksPerStructured(MapTransform):
    """Evaluation prompts: the :func:`slice_click_map` of every structure of an integer label ``(1, X, Y, Z)``.

    Writes ``click_key``: ``(S, X, Y, Z)`` float32, channel ``i`` for ``structures[i]`` (also for a structure absent
    from the volume: then every slice gets a negative click). The clicks come from one ``np.random.RandomState(seed)``
    created per call and used for the structures in order, so a case gets the same clicks in every run.
    """

    def __init__(
        self, label_key: str = "label", click_key: str = "clicks", structures: Sequence[int] = (1,), seed: int = 0
    ) -> None:
        MapTransform.__init__(self, keys=label_key)
        self.label_key, self.click_key, self.seed = label_key, click_key, int(seed)
        self.structures = [int(v) for v in structures]
        if not self.structures or min(self.structures) < 1:
            raise ValueError(f"structures must be a non-empty list of structure values >= 1, got {structures!r}")

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        label = torch.as_tensor(d[self.label_key])
        _check_label(label, self.label_key, "SliceClicksPerStructured")
        rng = np.random.RandomState(self.seed)
        d[self.click_key] = torch.cat([slice_click_map(label, s, rng) for s in self.structures])
        return d


class PointsToClickMapd(MapTransform):
    """Inference prompts: user points -> click map ``(1, X, Y, Z)`` float32 with the spatial shape of ``ref_key``.

    ``points_key``: ``(N, 3)`` voxel indices ``[x, y, z]`` of the current array (place this after
    :class:`common.transforms.geometry.FilePointsToArrayd`); ``labels_key``: ``(N,)`` 1 (positive) / 0 (negative),
    all 1 when the key is absent or ``None``. Each point is rounded to the nearest voxel, clamped into the image, and
    marked ``+1`` / ``-1``; a slice may hold several clicks. :class:`common.networks.msa.MSAVolume` prompts every slice
    with its own clicks only: to segment a structure on a slice, that slice needs a click.

    Raises:
        ValueError: points not ``(N, 3)`` or not finite, labels other than 0/1 or not one per point, or a positive
            and a negative click on the same voxel.
    """

    def __init__(
        self,
        points_key: str = "points",
        labels_key: str = "point_labels",
        ref_key: str = "image",
        click_key: str = "clicks",
    ) -> None:
        MapTransform.__init__(self, keys=points_key)
        self.points_key, self.labels_key, self.ref_key, self.click_key = points_key, labels_key, ref_key, click_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        image = d[self.ref_key]
        source = getattr(image, "meta", {}).get("filename_or_obj", "<in-memory image>")
        shape = tuple(image.shape[1:])
        points = torch.as_tensor(d[self.points_key], dtype=torch.float64).cpu()
        if points.ndim != 2 or points.shape[1] != len(shape) or not torch.isfinite(points).all():
            raise InvalidInputError(
                f"'{self.points_key}' for {source}: expected finite (N, {len(shape)}) voxel indices "
                f"[x, y, z] of the image of shape {shape}, got {points.tolist()}"
            )
        labels = d.get(self.labels_key)
        labels = torch.ones(len(points)) if labels is None else torch.as_tensor(labels).cpu().reshape(-1)
        if len(labels) != len(points) or not torch.isin(labels, torch.tensor([0, 1], dtype=labels.dtype)).all():
            raise InvalidInputError(
                f"'{self.labels_key}' for {source}: expected one label per point ({len(points)} points), "
                f"1 (positive) or 0 (negative), got {labels.tolist()}"
            )
        voxels = (
            torch.round(points).long().clamp(min=torch.zeros(len(shape), dtype=torch.long), max=torch.tensor(shape) - 1)
        )
        clicks = torch.zeros((1, *shape), dtype=torch.float32)
        for i, (voxel, label) in enumerate(zip(voxels.tolist(), labels.tolist())):
            value = 1.0 if label == 1 else -1.0
            index = (0, *voxel)
            if clicks[index] == -value:
                raise InvalidInputError(
                    f"'{self.points_key}' for {source}: point #{i} {points[i].tolist()} (label {label:g}) "
                    f"falls on voxel {voxel}, which already holds a click of the other sign"
                )
            clicks[index] = value
        d[self.click_key] = clicks.to(image.device) if isinstance(image, torch.Tensor) else clicks
        return d
