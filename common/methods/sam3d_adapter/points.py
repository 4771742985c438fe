"""3DSAM-adapter point prompts: foreground voxels plus voxels drawn from the whole volume, with replacement.

Unlike :class:`common.transforms.label_prompts.RandPointPromptd` (SAM-style positive/negative points of one label
value), 3DSAM-adapter's points carry no label: its prompt encoder samples the image features at each point.
Its "negative" points are drawn uniformly from the whole crop, foreground included (upstream issue #15).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable

__all__ = ["RandVolumePointsd"]


class RandVolumePointsd(Randomizable, MapTransform):
    """Sample 3DSAM-adapter point prompts from a binary channel-first label ``(1, X, Y, Z)`` (``> 0`` is foreground).

    With foreground: ``num_positive`` foreground voxels drawn uniformly with replacement, then ``num_random`` voxels
    drawn uniformly from the whole volume (they may be foreground, as upstream). Without foreground: only
    ``num_random_if_empty`` voxels from the whole volume, or a ValueError when ``require_foreground`` (evaluation,
    where a prompt needs a tumour). Writes ``point_key``: float32 ``(N, 3)`` voxel indices ``[x, y, z]`` of the
    label's array, positives first. Reproducible under ``set_random_state``.

    Presets (spec A8): training ``num_positive=10, num_random=20``; validation ``num_positive=10, num_random=0,
    num_random_if_empty=10``; test ``num_positive`` in {1, 3, 10}, ``num_random=0, require_foreground=True``.

    Args:
        label_key: key of the label; the points are in its voxel grid.
        point_key: key to write the points to.
        num_positive: foreground points.
        num_random: points from the whole volume when it has foreground.
        num_random_if_empty: points from the whole volume when it has none (default ``num_random``).
        require_foreground: raise on an empty label instead of sampling.
    """

    def __init__(
        self,
        label_key: str = "label",
        point_key: str = "points",
        num_positive: int = 10,
        num_random: int = 20,
        num_random_if_empty: int | None = None,
        require_foreground: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys=label_key)
        self.label_key, self.point_key = label_key, point_key
        self.num_positive, self.num_random = int(num_positive), int(num_random)
        self.num_random_if_empty = self.num_random if num_random_if_empty is None else int(num_random_if_empty)
        self.require_foreground = bool(require_foreground)
        if min(self.num_positive, self.num_random, self.num_random_if_empty) < 0:
            raise ValueError(
                f"point counts must be >= 0, got num_positive={num_positive}, num_random={num_random}, "
                f"num_random_if_empty={num_random_if_empty}."
            )
        if self.num_positive + self.num_random == 0:
            raise ValueError("num_positive + num_random must be >= 1: a labelled volume would get no point.")
        if self.num_random_if_empty == 0 and not self.require_foreground:
            raise ValueError(
                "num_random_if_empty must be >= 1 unless require_foreground=True: an empty volume would get no point."
            )
        self._indices = np.zeros(0, dtype=np.int64)

    def randomize(self, foreground: np.ndarray, size: int | None = None) -> None:
        """Draw flat indices: ``foreground`` lists the flat foreground indices of a volume of ``size`` voxels.

        ``size`` is required; its ``None`` default only keeps the signature of ``Randomizable.randomize``.
        """
        if size is None:
            raise TypeError("RandVolumePointsd.randomize() needs size, the number of voxels of the volume.")
        if foreground.size:
            positive = foreground[self.R.randint(0, foreground.size, size=self.num_positive)]
            self._indices = np.concatenate([positive, self.R.randint(0, size, size=self.num_random)])
        else:
            self._indices = self.R.randint(0, size, size=self.num_random_if_empty)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        label = d[self.label_key]
        meta = getattr(label, "meta", None) or {}
        source = meta.get("filename_or_obj", "<in-memory label>")
        if label.ndim != 4 or label.shape[0] != 1:
            raise ValueError(
                f"RandVolumePointsd: key {self.label_key!r} ({source}): expected a channel-first binary "
                f"label (1, X, Y, Z), got shape {tuple(label.shape)}."
            )
        mask = (label.as_tensor() if isinstance(label, MetaTensor) else torch.as_tensor(label))[0] > 0
        foreground = torch.nonzero(mask.flatten()).flatten().cpu().numpy()
        if not foreground.size and self.require_foreground:
            raise ValueError(
                f"RandVolumePointsd: key {self.label_key!r} ({source}): the label has no foreground "
                f"(all {mask.numel()} voxels are 0), so no point prompt can be placed on it."
            )
        self.randomize(foreground, mask.numel())
        coords = np.stack(np.unravel_index(self._indices, tuple(mask.shape)), axis=-1)
        d[self.point_key] = torch.as_tensor(coords, dtype=torch.float32)
        return d
