"""Medical SAM Adapter prompts: one click per axial slice on one structure, as a click map.

The published code picks a random foreground pixel per slice (so each slice may target another organ), gives it
in (row, column) order instead of SAM's (x, y), never rescales it to the encoder size, and labels every click
positive, even the random point on a slice without foreground. Here one structure is chosen per crop, every slice
gets one click on it (label 1) or, where the slice does not contain it, one click elsewhere (label 0); the clicks
are stored as a map with the image's shape (``+1`` / ``-1`` at the clicked voxels), so they follow the image
through spatial transforms and sliding windows, and :class:`common.networks.msa.MSAVolume` reads them per slice.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable

__all__ = ["RandSliceClicksd", "slice_click_map"]


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

    def __init__(self, label_key: str = "label", click_key: str = "clicks", target_key: str = "target",
                 value_key: str = "structure", labels: Sequence[int] | None = None) -> None:
        MapTransform.__init__(self, keys=label_key)
        self.label_key, self.click_key, self.target_key, self.value_key = label_key, click_key, target_key, value_key
        self.labels = None if labels is None else [int(v) for v in labels]
        if self.labels is not None and (not self.labels or min(self.labels) < 1):
            raise ValueError(f"labels must be a non-empty list of structure values >= 1, got {labels!r}")
        self._value = 0

    def randomize(self, present: Sequence[int]) -> None:
        candidates = [v for v in present if self.labels is None or v in self.labels] or self.labels
        self._value = int(candidates[self.R.randint(len(candidates))])

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        label = torch.as_tensor(d[self.label_key])
        if label.ndim != 4 or label.shape[0] != 1:
            raise ValueError(f"RandSliceClicksd: '{self.label_key}' must be (1, X, Y, Z), got {tuple(label.shape)}")
        present = [int(v) for v in torch.unique(label).tolist() if v > 0]
        if not present and self.labels is None:
            source = getattr(d[self.label_key], "meta", {}).get("filename_or_obj", "<in-memory label>")
            raise ValueError(f"RandSliceClicksd: '{self.label_key}' of {source} has no structure to click on")
        self.randomize(present)
        d[self.click_key] = slice_click_map(label, self._value, self.R)
        d[self.target_key] = (label == self._value).float()
        d[self.value_key] = self._value
        return d
