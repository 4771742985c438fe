"""Ultrasound frames to SAMUS's model frame: the class mask, the square resize, and the two label sizes.

All items are channel-first ``(C, X, Y)`` in the project's axis order until :class:`~common.transforms.sam_input.
ToSamLayoutd` at the end of the pipeline. The model frame is a square stretch (SAMUS resizes every image to
256 x 256 without keeping the aspect ratio); the loss uses the label at the low-res logit size (128 x 128).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform

from common.errors import InvalidInputError

__all__ = ["ResizeFramed", "SelectClassd", "resize_frame"]


def resize_frame(x: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """``(C, X, Y) -> (C, size, size)`` plain tensor by :class:`ResizeFramed`'s rules (``mode`` ``"bilinear"`` or
    ``"nearest"``; nearest keeps the dtype)."""
    if mode == "bilinear":
        return F.interpolate(x[None].float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)[
            0
        ]
    return F.interpolate(x[None].float(), size=(size, size), mode="nearest-exact")[0].to(x.dtype)


class ResizeFramed(MapTransform):
    """Resize ``keys`` to ``size x size``: ``"bilinear"`` antialiased when shrinking (as Pillow's bilinear resize
    that SAMUS's torchvision transforms use; MONAI's ``Resized`` smooths with a Gaussian instead) or
    ``"nearest"`` (pixel-centre nearest, as Pillow). Meta data is kept; ``meta["model_frame"]`` records the size."""

    def __init__(self, keys: KeysCollection, size: int = 256, mode: str = "bilinear") -> None:
        super().__init__(keys)
        if mode not in ("bilinear", "nearest"):
            raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
        self.size, self.mode = int(size), mode

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            out = resize_frame(x, self.size, self.mode)
            if hasattr(x, "meta"):
                out = type(x)(out, meta=dict(x.meta))
                out.meta["model_frame"] = self.size
            d[key] = out
        return d


class SelectClassd(MapTransform):
    """Binary mask of one class: with ``binary`` (SAMUS's 2-class datasets, masks 0/255 or 0/1) every non-zero
    pixel; otherwise the pixels equal to the item's ``class_key`` value (SAMUS's leading class id; default 1).
    An item's own ``"binary"`` entry (set by the SAMUS-list datalist from ``class.json``) overrides ``binary``.
    Output float ``(1, X, Y)`` in {0, 1}."""

    def __init__(self, keys: KeysCollection, class_key: str = "class_id", binary: bool = True) -> None:
        super().__init__(keys)
        self.class_key, self.binary = class_key, binary

    def __call__(self, data):
        d = dict(data)
        class_id = int(d.get(self.class_key, 1))
        binary = bool(d.get("binary", self.binary))
        for key in self.key_iterator(d):
            label = d[key]
            if label.ndim != 3 or label.shape[0] != 1:
                raise InvalidInputError(f"'{key}': expected one mask channel (1, X, Y), got {tuple(label.shape)}")
            d[key] = (label > 0 if binary else label == class_id).to(torch.float32)
        return d
