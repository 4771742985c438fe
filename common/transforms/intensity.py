"""Intensity presets: CT windows (MONAI ``ScaleIntensityRanged``) and MedSAM's non-zero percentile rule.

CT windows are given as ``(level, width)`` in HU and become the clip range
``[level - width/2, level + width/2]``:

==============  ============  ==============  =====================================================
preset          level, width  HU range        source
==============  ============  ==============  =====================================================
``abdomen``     40, 400       [-160, 240]     MedSAM soft tissue (FLARE22 demo, LiteMedSAM reference)
``chest``       -600, 1500    [-1350, 150]    MedSAM utils/README lung window (the paper is quoted
                                              as "W1500, L-160": pass ``(-160, 1500)`` for that)
``brain``       40, 80        [0, 80]         MedSAM brain window
``medsam_v0``   250, 1500     [-500, 1000]    MedSAM v0 pipeline's fixed clip (commit 7a0337e)
==============  ============  ==============  =====================================================

The reference scripts scale the clipped volume by its own min/max, which equals the window ends
whenever the volume reaches both (any CT volume containing air and bone); :class:`CTWindowd` uses the
window ends, i.e. MONAI's ``ScaleIntensityRanged(clip=True)``. The reference then stores uint8
(``uint8(x * 255)``, truncating); do that, if wanted, with ``b_max=255`` and a cast.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import cast

import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, ScaleIntensityRanged, Transform
from monai.transforms.utils_pytorch_numpy_unification import percentile
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

__all__ = ["CT_WINDOWS", "window_range", "CTWindowd", "NonZeroPercentileNormalize", "NonZeroPercentileNormalized"]

#: CT window presets as (level, width) in HU.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "abdomen": (40, 400),
    "chest": (-600, 1500),
    "brain": (40, 80),
    "medsam_v0": (250, 1500),  # the fixed HU clip [-500, 1000] of MedSAM's v0 pipeline
}


def window_range(window: str | Sequence[float]) -> tuple[float, float]:
    """``(a_min, a_max) = (level - width/2, level + width/2)`` for a preset name or a ``(level, width)`` pair.

    Raises:
        ValueError: an unknown preset name (the message lists the presets), a pair of the wrong length,
            non-finite numbers or a width that is not positive.
    """
    if isinstance(window, str):
        key = window.strip().lower()
        if key not in CT_WINDOWS:
            presets = ", ".join(f"{k} (level {lv}, width {wd})" for k, (lv, wd) in CT_WINDOWS.items())
            raise ValueError(f"unknown CT window {window!r}; presets: {presets}; or pass a (level, width) pair.")
        level, width = CT_WINDOWS[key]
    else:
        try:
            values = [float(v) for v in window]
        except (TypeError, ValueError) as err:
            raise ValueError(f"window must be a preset name or a (level, width) pair, got {window!r}.") from err
        if len(values) != 2:
            raise ValueError(f"window must be a (level, width) pair, got {len(values)} values: {window!r}.")
        level, width = values
    if not (np.isfinite(level) and np.isfinite(width)) or width <= 0:
        raise ValueError(f"window width must be positive and finite, got level={level}, width={width}.")
    return float(level) - float(width) / 2.0, float(level) + float(width) / 2.0


class CTWindowd(ScaleIntensityRanged):
    """CT windowing: clip HU to a window and scale it linearly to ``[b_min, b_max]``.

    A thin subclass of MONAI's ``ScaleIntensityRanged`` with ``clip=True`` whose range comes from a
    preset name in :data:`CT_WINDOWS` or a ``(level, width)`` pair (a list in bundle JSON), e.g.
    ``{"_target_": "common.transforms.intensity.CTWindowd", "keys": "image", "window": "abdomen"}``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        window: str | Sequence[float] = "abdomen",
        b_min: float = 0.0,
        b_max: float = 1.0,
        dtype: DtypeLike = np.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        a_min, a_max = window_range(window)
        super().__init__(
            keys,
            a_min=a_min,
            a_max=a_max,
            b_min=b_min,
            b_max=b_max,
            clip=True,
            dtype=dtype,
            allow_missing_keys=allow_missing_keys,
        )
        self.window = window
        self.a_min, self.a_max = a_min, a_max


class NonZeroPercentileNormalize(Transform):
    """MedSAM's rule for MR and other grey modalities (US, mammography, OCT), for one array.

    1. ``lo, hi`` = the ``lower`` and ``upper`` percentiles (linear interpolation, as ``np.percentile``)
       of the foreground voxels;
    2. clip to ``[lo, hi]`` and scale linearly to ``[b_min, b_max]``;
    3. voxels that were exactly 0 are set to ``b_min`` (background stays background).

    Foreground: ``"positive"`` (default) selects ``x > 0``, which is what MedSAM's ``pre_CT_MR.py`` does;
    ``"nonzero"`` selects ``x != 0``. They differ only for images with negative values (with
    ``"positive"`` those clip to ``lo`` and map to ``b_min``).

    Why not MONAI's ``ScaleIntensityRangePercentiles``: it takes the percentiles over *all* voxels, so
    the zero background of skull-stripped MR / ultrasound sectors pulls the lower percentile to 0 and
    the zeros are not kept apart. Works on numpy arrays, tensors and MetaTensors (meta kept); the
    percentiles are computed over the whole array unless ``channel_wise``. A degenerate range
    (``hi == lo``) maps everything to ``b_min`` with a warning, as MONAI's ``ScaleIntensityRange`` does.

    Raises:
        ValueError: when there is no foreground voxel.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        lower: float = 0.5,
        upper: float = 99.5,
        b_min: float = 0.0,
        b_max: float = 1.0,
        foreground: str = "positive",
        channel_wise: bool = False,
        dtype: DtypeLike = np.float32,
    ) -> None:
        if not 0.0 <= lower <= upper <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= lower <= upper <= 100, got {lower}, {upper}.")
        if foreground not in ("positive", "nonzero"):
            raise ValueError(f"foreground must be 'positive' or 'nonzero', got {foreground!r}.")
        self.lower, self.upper = float(lower), float(upper)
        self.b_min, self.b_max = float(b_min), float(b_max)
        self.foreground = foreground
        self.channel_wise = channel_wise
        self.dtype = dtype

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        fg = x > 0 if self.foreground == "positive" else x != 0
        values = x[fg]
        if values.numel() == 0:
            raise ValueError(
                f"no {'positive' if self.foreground == 'positive' else 'non-zero'} voxel to take percentiles of "
                f"(image of shape {tuple(x.shape)}, min {float(x.min()) if x.numel() else 'n/a'})."
            )
        # a tensor and two percentiles give a (2,) tensor
        bounds = cast(torch.Tensor, percentile(values.to(torch.float64), [self.lower, self.upper]))
        lo, hi = (float(v) for v in bounds)
        if hi - lo <= 0:
            warnings.warn(f"percentile range is empty (lo == hi == {lo}); output set to b_min.", stacklevel=3)
            return torch.full_like(x, self.b_min)
        out = (x.clamp(lo, hi) - lo) / (hi - lo) * (self.b_max - self.b_min) + self.b_min
        return torch.where(x == 0, torch.full_like(out, self.b_min), out)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        x = convert_to_tensor(img, track_meta=False)
        x = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
        if self.channel_wise:
            out = torch.stack([self._normalise(c) for c in x])
        else:
            out = self._normalise(x)
        return convert_to_dst_type(out, dst=img, dtype=self.dtype)[0]


class NonZeroPercentileNormalized(MapTransform):
    """Dictionary wrapper of :class:`NonZeroPercentileNormalize` (MedSAM's MR / other-modality rule).

    Defaults give [0, 1]; MedSAM's preprocessing uses ``b_max=255`` and then casts to uint8. A failure
    names the key and, when the MetaTensor has one, the file (``filename_or_obj``).
    """

    backend = NonZeroPercentileNormalize.backend

    def __init__(
        self,
        keys: KeysCollection,
        lower: float = 0.5,
        upper: float = 99.5,
        b_min: float = 0.0,
        b_max: float = 1.0,
        foreground: str = "positive",
        channel_wise: bool = False,
        dtype: DtypeLike = np.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalizer = NonZeroPercentileNormalize(lower, upper, b_min, b_max, foreground, channel_wise, dtype)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            try:
                d[key] = self.normalizer(d[key])
            except ValueError as err:
                meta: object = getattr(d[key], "meta", None) or d.get(f"{key}_meta_dict") or {}
                source = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
                where = f" (file {source})" if source else ""
                raise ValueError(f"NonZeroPercentileNormalized: key {key!r}{where}: {err}") from err
        return d


def intensity_normalizer(
    keys: KeysCollection, window: str | Sequence[float] = "abdomen", b_min: float = 0.0, b_max: float = 255.0
):
    """One config switch for the intensity step of a bundle.

    ``window`` is a CT preset name (see ``CT_WINDOWS``) or a ``(level, width)`` pair -> :class:`CTWindowd`;
    ``"percentile"`` -> :class:`NonZeroPercentileNormalized` (MR, ultrasound and other non-CT images);
    ``"none"`` -> min-max over the whole image (images already on a display scale, e.g. 8-bit PNG).
    """
    from monai.transforms import ScaleIntensityd

    if isinstance(window, str) and window.lower() == "percentile":
        return NonZeroPercentileNormalized(keys, b_min=b_min, b_max=b_max)
    if isinstance(window, str) and window.lower() == "none":
        return ScaleIntensityd(keys, minv=b_min, maxv=b_max)
    window_range(window)  # validates names and pairs, listing the presets on error
    return CTWindowd(keys, window=window, b_min=b_min, b_max=b_max)
