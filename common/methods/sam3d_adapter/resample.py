"""Resampling to a target voxel size by a scale factor, as the 3DSAM-adapter data pipeline does it.

3DSAM-adapter resamples every volume with ``torch.nn.functional.interpolate(scale_factor=spacing / target)``
(``align_corners=False``): the output has ``floor(n * scale)`` voxels per axis and output voxel ``o`` samples the
input at index ``(o + 0.5) / scale - 0.5`` with the *exact* scale. MONAI has no transform that does this:

* ``Zoom`` / ``Zoomd`` calls ``interpolate`` with ``recompute_scale_factor=True``, so it samples at
  ``(o + 0.5) * n / n_out - 0.5`` (the scale rounded to the output size), and ``keep_size`` pads or crops;
* ``Spacing`` / ``Spacingd`` resamples through the affine; its output has ``round((n - 1) * scale) + 1`` voxels
  with the first voxel centres aligned (``round(n * scale)`` with ``scale_extent=True``), never ``floor(n * scale)``.

Each of these moves the samples by up to a voxel compared with the published pipeline, so the weights trained
on it would see slightly different images. :class:`ScaleResampled` reproduces it and keeps the MetaTensor
affine consistent, so the result overlays the input in world space and ``Invertd`` can undo it.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.transforms import InvertibleTransform, MapTransform
from monai.utils import TraceKeys, convert_to_dst_type, ensure_tuple_rep

__all__ = ["ScaleResampled", "scale_affine"]

MODES = ("trilinear", "nearest")


def scale_affine(scale: Sequence[float] | np.ndarray) -> np.ndarray:
    """``(4, 4)`` map from new voxel indices to old ones: ``old = (new + 0.5) / scale - 0.5`` per axis."""
    s = np.asarray(scale, dtype=np.float64)
    affine = np.diag(np.append(1.0 / s, 1.0))
    affine[:3, 3] = 0.5 / s - 0.5
    return affine


def _interpolate(x: torch.Tensor, mode: str, scale: Sequence[float], in_plane_first: bool) -> torch.Tensor:
    """``(C, X, Y, Z)`` -> ``(C, floor(X*sx), floor(Y*sy), floor(Z*sz))`` with the exact ``scale`` (see module)."""
    options = {"align_corners": False} if mode == "trilinear" else {}
    if not in_plane_first:
        return F.interpolate(x[None], scale_factor=tuple(scale), mode=mode, recompute_scale_factor=False, **options)[0]
    slices = x.permute(3, 0, 1, 2)  # (Z, C, X, Y): one 2D image per slice along axis 2
    slices = F.interpolate(
        slices,
        scale_factor=tuple(scale[:2]),
        mode="bilinear" if mode == "trilinear" else mode,
        recompute_scale_factor=False,
        **options,
    )
    planar = slices.permute(1, 2, 3, 0)
    return F.interpolate(
        planar[None], scale_factor=(1.0, 1.0, scale[2]), mode=mode, recompute_scale_factor=False, **options
    )[0]


class ScaleResampled(MapTransform, InvertibleTransform):
    """Resample channel-first 3D MetaTensors ``(C, X, Y, Z)`` to ``target_spacing`` (mm) with a scale factor.

    ``scale = spacing / target_spacing`` per axis, where ``spacing`` (mm) is read from each key's affine (column
    norms). The output has ``floor(n * scale)`` voxels per axis; output voxel ``o`` samples input index
    ``(o + 0.5) / scale - 0.5``, as ``F.interpolate(..., align_corners=False, recompute_scale_factor=False)``
    does (see the module docstring for how this differs from MONAI's ``Zoom`` and ``Spacing``).

    If ``max(spacing) / min(spacing) > anisotropy_ratio`` the volume is resampled in two steps, as upstream:
    bilinear in-plane (axes 0 and 1) slice by slice along axis 2, then linear along axis 2 only (the same
    separable interpolation as one trilinear pass, up to float rounding).

    The affine becomes ``affine @ scale_affine(scale)``, so each output voxel sits at the world position it
    was sampled from. ``"nearest"`` gets the same affine although PyTorch's (legacy) nearest copies old voxel
    ``floor(o / scale)``: both agree on average (for an integer upsampling factor each old voxel becomes a block
    centred on it), single voxels may be off by up to one old voxel. Upstream uses this nearest for prompt labels.

    Integer and bool inputs are interpolated in float32; ``"nearest"`` casts the result back to the input dtype,
    ``"trilinear"`` returns float32. Float inputs keep their dtype.

    ``inverse`` resizes back to the original spatial shape with ``F.interpolate(size=..., align_corners=False)``,
    trilinear (nearest if the forward mode was nearest) and restores the original affine: the way 3DSAM-adapter
    brings its 1 mm probability map back to the label's grid. ``Invertd`` defaults to ``nearest_interp=True``,
    which makes it nearest; pass ``nearest_interp=False`` for upstream's trilinear resize.

    Args:
        keys: keys of the MetaTensors to resample.
        target_spacing: voxel size to reach, in mm, per array axis.
        mode: ``"trilinear"`` or ``"nearest"``, one for all keys or one per key.
        anisotropy_ratio: spacing ratio above which the two-step path is used.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        target_spacing: Sequence[float] = (1.0, 1.0, 1.0),
        mode: str | Sequence[str] = "trilinear",
        anisotropy_ratio: float = 8.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.target_spacing = np.asarray(target_spacing, dtype=np.float64)
        if self.target_spacing.shape != (3,) or not np.all(self.target_spacing > 0):
            raise ValueError(f"target_spacing must be 3 positive voxel sizes in mm, got {target_spacing!r}.")
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        bad = [m for m in self.mode if m not in MODES]
        if bad:
            raise ValueError(f"mode must be one of {MODES} (one for all keys or one per key), got {mode!r}.")
        if anisotropy_ratio < 1:
            raise ValueError(f"anisotropy_ratio must be >= 1, got {anisotropy_ratio}.")
        self.anisotropy_ratio = float(anisotropy_ratio)

    def _resample(self, key: Hashable, image, mode: str) -> MetaTensor:
        if not isinstance(image, MetaTensor) or image.ndim != 4:
            raise ValueError(
                f"ScaleResampled: key {key!r}: expected a channel-first 3D MetaTensor (C, X, Y, Z) carrying its "
                f"affine, got {type(image).__name__} of shape {tuple(getattr(image, 'shape', ()))}."
            )
        spacing = np.asarray(affine_to_spacing(image.affine, r=3, dtype=np.float64), dtype=np.float64)
        scale = spacing / self.target_spacing
        shape = list(image.shape[1:])
        if min(int(np.floor(n * s)) for n, s in zip(shape, scale)) < 1:
            raise ValueError(
                f"ScaleResampled: key {key!r}: spatial shape {shape} at spacing {spacing.tolist()} mm gives an empty "
                f"output at {self.target_spacing.tolist()} mm (scale {scale.tolist()})."
            )
        x = image.as_tensor()
        work_dtype = x.dtype if x.is_floating_point() else torch.float32
        anisotropic = spacing.max() / spacing.min() > self.anisotropy_ratio
        out = _interpolate(x.to(work_dtype), mode, scale.tolist(), anisotropic)
        if mode == "nearest":
            out = out.to(x.dtype)
        out = convert_to_dst_type(out, image, dtype=out.dtype)[0]
        extra = {"mode": mode, "src_affine": image.affine.clone()}
        return self.push_transform(out, orig_size=shape, extra_info=extra, affine=torch.as_tensor(scale_affine(scale)))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key, mode in self.key_iterator(d, self.mode):
            d[key] = self._resample(key, d[key], mode)
        return d

    def inverse(self, data: Mapping[Hashable, MetaTensor]) -> dict[Hashable, MetaTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            transform = self.pop_transform(d[key])
            size = [int(n) for n in transform[TraceKeys.ORIG_SIZE]]
            extra = transform[TraceKeys.EXTRA_INFO]
            mode = "nearest" if extra["mode"] == "nearest" else "trilinear"
            x = d[key].as_tensor()
            work_dtype = x.dtype if x.is_floating_point() else torch.float32
            options = {"align_corners": False} if mode == "trilinear" else {}
            out = F.interpolate(x.to(work_dtype)[None], size=size, mode=mode, **options)[0]
            if mode == "nearest":
                out = out.to(x.dtype)
            out = convert_to_dst_type(out, d[key], dtype=out.dtype)[0]
            out.affine = extra["src_affine"]
            d[key] = out
        return d
