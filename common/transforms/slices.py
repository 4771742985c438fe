"""One axial slice of a volume as a 2-D item (SAMIHS trains and evaluates slice by slice).

MONAI's ``SpatialCropd`` takes a fixed ROI at construction; here the slice index comes with each datalist item
(``{"image": volume, "slice": k}``), so the index is read per item.
"""

from __future__ import annotations

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from common.errors import InvalidInputError

__all__ = ["SelectSliced"]


class SelectSliced(MapTransform):
    """``(C, X, Y, Z)`` -> ``(C, X, Y)`` at the item's ``slice_key`` index along the last axis; the meta data keeps
    the volume's and gains ``slice_index``."""

    def __init__(self, keys: KeysCollection, slice_key: str = "slice", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.slice_key = slice_key

    def __call__(self, data):
        d = dict(data)
        k = int(d[self.slice_key])
        for key in self.key_iterator(d):
            volume = d[key]
            if volume.ndim != 4 or not 0 <= k < volume.shape[-1]:
                raise InvalidInputError(f"'{key}': slice {k} of a volume of shape {tuple(volume.shape)} (C, X, Y, Z)")
            sliced = torch.as_tensor(volume)[..., k].clone()
            meta = {**getattr(volume, "meta", {}), "slice_index": k}
            d[key] = MetaTensor(sliced, meta=meta)
        return d
