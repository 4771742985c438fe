"""2D training samples from 3D volumes.

Random slices for training come from MONAI's ``RandCropByPosNegLabeld`` with a ``(-1, -1, 1)`` ROI. For
validation, :class:`ForegroundSlicesd` picks slices deterministically so the validation Dice, which
selects the saved checkpoint, does not change with the random state.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor


class ForegroundSlicesd:
    """Volume ``(C, X, Y, Z)`` + label ``(1, X, Y, Z)`` -> list of 2D samples, ``num_slices`` per structure.

    For each label value present (or each of ``structures``), takes ``num_slices`` evenly spaced slices among
    those containing it; each sample has the image slice ``(C, X, Y)``, the binary label slice ``(1, X, Y)``
    and ``label_value``.
    """

    def __init__(
        self,
        image_key: str = "image",
        label_key: str = "label",
        num_slices: int = 3,
        structures: list[int] | None = None,
    ):
        self.image_key, self.label_key = image_key, label_key
        self.num_slices, self.structures = num_slices, structures

    def __call__(self, data) -> list[dict]:
        image, label = data[self.image_key], torch.as_tensor(data[self.label_key])[0].round().long()
        values = self.structures or [int(v) for v in torch.unique(label).tolist() if v != 0]
        samples = []
        for value in values:
            zs = torch.nonzero((label == value).any(0).any(0)).flatten().tolist()
            if not zs:
                continue
            picks = sorted(set(np.linspace(0, len(zs) - 1, min(self.num_slices, len(zs))).round().astype(int)))
            for i in picks:
                z = zs[i]
                sample = {k: v for k, v in data.items() if k not in (self.image_key, self.label_key)}
                img = image[..., z]
                sample[self.image_key] = img.as_tensor() if isinstance(img, MetaTensor) else img
                sample[self.label_key] = (label[None, :, :, z] == value).float()
                sample["label_value"] = value
                samples.append(sample)
        if not samples:
            source = getattr(data[self.label_key], "meta", {}).get("filename_or_obj", "<in-memory label>")
            wanted = f"none of the label values {list(self.structures)}" if self.structures else "no foreground"
            raise ValueError(f"'{self.label_key}' from {source} has {wanted} to sample validation slices from")
        return samples
