"""One head-CT slice to SAMIHS's encoder input: clip, resize to the model frame, scale to [0, 1].

Published (spec 3.5, ``utils/data_ihs.py``): clip to the slice's 0.05 and 99.5 percentiles (0.05, not 0.5), resize to
``size x size`` (bilinear), then min-max to [0, 1]; no HU window. The brain-window option (``window="brain"``,
level 40 / width 80 HU, or any preset or ``(level, width)`` of :func:`common.transforms.intensity.window_range`)
instead maps the window's ends to 0 and 1 before resizing and skips the per-slice min-max, so a slice's grey levels
keep their HU meaning from slice to slice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import ClipIntensityPercentiles, MapTransform, ScaleIntensity, ScaleIntensityRange

from common.methods.samus.frames import resize_frame
from common.transforms.intensity import window_range

__all__ = ["PERCENTILES", "SliceToModeld", "slice_intensity_to_model"]

#: The published per-slice clip (lower, upper) percentiles.
PERCENTILES = (0.05, 99.5)


def slice_intensity_to_model(
    slice_cxy: torch.Tensor, size: int, window: str | Sequence[float] | None = None, percentiles=PERCENTILES
) -> torch.Tensor:
    """``(C, X, Y)`` slice in HU -> ``(C, size, size)`` float in [0, 1] (project layout, rows still along x)."""
    x = torch.as_tensor(slice_cxy).float()
    if window is None:
        x = torch.as_tensor(ClipIntensityPercentiles(lower=percentiles[0], upper=percentiles[1])(x))
        return torch.as_tensor(ScaleIntensity(minv=0.0, maxv=1.0)(resize_frame(x, size, "bilinear")))
    a_min, a_max = window_range(window)
    x = torch.as_tensor(ScaleIntensityRange(a_min, a_max, 0.0, 1.0, clip=True)(x))
    return resize_frame(x, size, "bilinear").clamp(0.0, 1.0)


class SliceToModeld(MapTransform):
    """:func:`slice_intensity_to_model` on ``keys`` (``(C, X, Y)``); meta data kept, ``meta["model_frame"]`` set
    as :class:`~common.methods.samus.frames.ResizeFramed` does."""

    def __init__(
        self,
        keys: KeysCollection,
        size: int = 1024,
        window: str | Sequence[float] | None = None,
        percentiles: Sequence[float] = PERCENTILES,
    ) -> None:
        super().__init__(keys)
        if window is not None:
            window_range(window)  # a bad window fails when the pipeline is built, not on the first slice
        self.size, self.window, self.percentiles = int(size), window, tuple(percentiles)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            out = slice_intensity_to_model(x, self.size, self.window, self.percentiles)
            if hasattr(x, "meta"):
                out = type(x)(out, meta=dict(x.meta))
                out.meta["model_frame"] = self.size
            d[key] = out
        return d
