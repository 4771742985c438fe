"""SAM-style resizing in pure torch: OpenCV-equivalent ``INTER_AREA`` / ``INTER_NEAREST``, longest side, padding.

Why this module exists
----------------------
LiteMedSAM (and the CVPR24 "MedSAM on laptop" reference pipeline) resizes each slice so that its longest
side is 256 with OpenCV's ``cv2.resize(..., interpolation=cv2.INTER_AREA)``. Neither torch nor MONAI has
that operation:

* ``torch.nn.functional.interpolate(mode="area")`` (MONAI ``Resize(mode="area")``) is adaptive average
  pooling: it equals ``INTER_AREA`` for integer shrink factors only, and for enlarging it is
  nearest-neighbour like, whereas OpenCV enlarges with a bilinear-like rule of its own (below);
* antialiased bilinear (``antialias=True``) uses a triangle filter, not pixel areas.

The published weights were trained on ``INTER_AREA`` inputs (e.g. the reference 3 mm case goes
101x122 -> 212x256, an enlargement), so this module reproduces ``INTER_AREA`` exactly (to float32
rounding) without importing OpenCV, on any device and batched over leading dimensions.

OpenCV's ``INTER_AREA`` rules (checked numerically against OpenCV 5.0 for every size pair up to
~200 pixels, see ``tests/unit/test_resize.py``):

* **both axes shrink or keep their size** (``out <= in`` on each axis): each output pixel is the
  average of the input pixels its footprint ``[d*s, (d+1)*s)`` covers (``s = in/out``, computed as
  ``1/(out/in)``), weighted by the covered fraction; partial covers below 1e-3 pixel are dropped,
  and weights are divided by the footprint width (``min(s, in - d*s)``). Integer factors are a plain
  block mean.
* **any axis grows** (including the mixed case, one axis up and one down): OpenCV falls back to its
  bilinear kernel with ``INTER_AREA`` coefficients on *both* axes: ``sx = floor(d*s)``,
  ``f = float32((d+1) - (sx+1)/s)``, ``f = 0 if f <= 0 else f - floor(f)``, output
  ``(1-f)*src[sx] + f*src[sx+1]``, and the last source pixel is replicated (``sx >= in-1`` gives
  ``f = 0``). When enlarging by ``k`` this copies each pixel and blends only across pixel borders
  (a "sharp bilinear"); on a shrinking axis in the mixed case it is a two-tap blend, not an area
  mean. The ``float32`` rounding of ``f`` matters: without it a few rows (e.g. 14 -> 58, row 29)
  pick the neighbouring pixel.

Each rule is separable, so the resize is two weight matrices ``(out_h x H)`` and ``(out_w x W)``
applied by matmul. For ``uint8`` input OpenCV returns ``uint8``; rounding the float result of
:func:`area_resize` half up (``torch.floor(x + 0.5)``) agrees within one grey level everywhere, exactly
on ~99.9 % of pixels when shrinking (100 % for halving) and ~94 % when enlarging. OpenCV itself rounds
ties differently by path: its 2x2 mean and its fixed-point bilinear (11-bit coefficients, used when
enlarging) round half up, its other integer factors round ``sum * float(1/area)`` half to even; a model
of the fixed-point arithmetic reproduces the enlarging case exactly but is not implemented here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

__all__ = [
    "area_resize",
    "area_resize_matrices",
    "nearest_resize",
    "longest_side_size",
    "resize_longest_side",
    "pad_bottom_right",
    "minmax_normalise",
    "scale_coords_longest_side",
]

RESIZE_MODES = ("area", "nearest")


def _pair(size: int | Sequence[int], name: str = "size") -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"{name} must be a positive int or a pair of positive ints (h, w), got {size}.")
    return size[0], size[1]


def _plain_tensor(image) -> torch.Tensor:
    """A plain tensor view (MetaTensor meta would describe the wrong grid after resizing)."""
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image))
    elif not isinstance(image, torch.Tensor):
        image = torch.as_tensor(image)
    if hasattr(image, "as_tensor"):  # MetaTensor
        image = image.as_tensor()
    if image.ndim < 2:
        raise ValueError(f"expected an image of shape (..., H, W), got shape {tuple(image.shape)}.")
    return image


@lru_cache(maxsize=512)
def _area_shrink_weights(n_in: int, n_out: int) -> np.ndarray:
    """OpenCV's area table (``out <= in``): footprint-coverage weights, float64 ``(n_out, n_in)``."""
    scale = 1.0 / (n_out / n_in)  # the same double arithmetic as OpenCV (scale = 1/inv_scale)
    w = np.zeros((n_out, n_in), dtype=np.float64)
    for d in range(n_out):
        f1 = d * scale
        f2 = f1 + scale
        cell = min(scale, n_in - f1)
        s2 = min(math.floor(f2), n_in - 1)
        s1 = min(math.ceil(f1), s2)
        if s1 - f1 > 1e-3:
            w[d, s1 - 1] += (s1 - f1) / cell
        w[d, s1:s2] += 1.0 / cell
        if f2 - s2 > 1e-3:
            w[d, s2] += min(f2 - s2, 1.0, cell) / cell
    return w


@lru_cache(maxsize=512)
def _area_grow_weights(n_in: int, n_out: int) -> np.ndarray:
    """OpenCV's ``INTER_AREA`` coefficients in its bilinear kernel (some axis grows), float64."""
    inv_scale = n_out / n_in
    scale = 1.0 / inv_scale
    w = np.zeros((n_out, n_in), dtype=np.float64)
    for d in range(n_out):
        sx = math.floor(d * scale)
        f = float(np.float32((d + 1) - (sx + 1) * inv_scale))  # OpenCV stores the coefficient as float
        f = 0.0 if f <= 0 else float(np.float32(f - math.floor(f)))
        if sx >= n_in - 1:
            sx, f = n_in - 1, 0.0
        w[d, sx] += 1.0 - f
        if f:
            w[d, sx + 1] += f
    return w


def area_resize_matrices(
    in_size: Sequence[int], out_size: Sequence[int], dtype: torch.dtype = torch.float64, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two separable ``INTER_AREA`` weight matrices ``(out_h, H)`` and ``(out_w, W)``.

    ``area_resize(x, out_size) == wh @ x @ ww.T``. Each row sums to 1 (up to OpenCV's 1e-3 rule).
    """
    (h, w), (oh, ow) = _pair(in_size, "in_size"), _pair(out_size, "out_size")
    if oh <= h and ow <= w:
        wh, ww = _area_shrink_weights(h, oh), _area_shrink_weights(w, ow)
    else:
        wh, ww = _area_grow_weights(h, oh), _area_grow_weights(w, ow)
    return (torch.as_tensor(wh, dtype=dtype, device=device), torch.as_tensor(ww, dtype=dtype, device=device))


def area_resize(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize the last two axes like ``cv2.resize(img, (out_w, out_h), interpolation=cv2.INTER_AREA)``.

    Args:
        image: ``(..., H, W)`` tensor (or array); any leading dimensions are batched. Floating inputs keep
            their dtype; integer/bool inputs are computed in float32 and returned as float (OpenCV would
            round to the input type: ``torch.floor(result + 0.5)`` to compare with its ``uint8`` output).
        size: ``(out_h, out_w)``. Note the order: OpenCV's ``dsize`` is ``(width, height)``.

    Returns:
        a plain tensor ``(..., out_h, out_w)`` on the input's device (MetaTensor meta is dropped: the
        affine would be stale).
    """
    x = _plain_tensor(image)
    if not x.is_floating_point():
        x = x.to(torch.float32)
    h, w = x.shape[-2:]
    oh, ow = _pair(size)
    if (oh, ow) == (h, w):
        return x.clone()
    wh, ww = area_resize_matrices((h, w), (oh, ow), dtype=x.dtype, device=x.device)
    # contract the axis that shrinks the data most first (fewer flops; the result is the same)
    if oh * w <= h * ow:
        return torch.matmul(torch.matmul(wh, x), ww.T)
    return torch.matmul(wh, torch.matmul(x, ww.T))


def _nearest_indices(n_in: int, n_out: int, device) -> torch.Tensor:
    scale = 1.0 / (n_out / n_in)  # OpenCV: ifx = 1/inv_scale, sx = floor(dx * ifx), clamped
    idx = [min(math.floor(d * scale), n_in - 1) for d in range(n_out)]
    return torch.as_tensor(idx, dtype=torch.long, device=device)


def nearest_resize(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize the last two axes like ``cv2.resize(..., interpolation=cv2.INTER_NEAREST)`` (dtype kept).

    Source index ``min(floor(d * (1 / (out/in))), in - 1)`` in double precision, as OpenCV computes it;
    ``torch.nn.functional.interpolate(mode="nearest")`` uses a float32 scale and can pick the neighbouring
    pixel where ``d * in / out`` is an integer. Use it for label maps (LiteMedSAM resizes its ground truth
    this way).
    """
    x = _plain_tensor(image)
    h, w = x.shape[-2:]
    oh, ow = _pair(size)
    rows = _nearest_indices(h, oh, x.device)
    cols = _nearest_indices(w, ow, x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def longest_side_size(h: int, w: int, target: int) -> tuple[int, int]:
    """``(new_h, new_w)`` with the longest side equal to ``target``: ``int(v * s + 0.5)``, ``s = target/max(h, w)``.

    This is the LiteMedSAM reference rule, the same as segment-anything's
    ``ResizeLongestSide.get_preprocess_shape``.
    """
    if h < 1 or w < 1 or target < 1:
        raise ValueError(f"sizes must be positive, got h={h}, w={w}, target={target}.")
    scale = target / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def resize_longest_side(image: torch.Tensor, target: int = 256, mode: str = "area") -> torch.Tensor:
    """Resize ``(..., H, W)`` so that ``max(new_h, new_w) == target`` (aspect kept, see :func:`longest_side_size`).

    Args:
        image: ``(..., H, W)`` tensor or array.
        target: the longest side after resizing (LiteMedSAM: 256; SAM/MedSAM: 1024).
        mode: ``"area"`` (OpenCV ``INTER_AREA``, for images) or ``"nearest"`` (OpenCV ``INTER_NEAREST``,
            for label maps).
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"mode must be one of {RESIZE_MODES}, got {mode!r}.")
    x = _plain_tensor(image)
    size = longest_side_size(int(x.shape[-2]), int(x.shape[-1]), int(target))
    return area_resize(x, size) if mode == "area" else nearest_resize(x, size)


def pad_bottom_right(image: torch.Tensor, size: int | Sequence[int], value: float = 0.0) -> torch.Tensor:
    """Pad ``(..., H, W)`` with ``value`` at the bottom and right to ``size`` (int or ``(h, w)``).

    Content keeps its pixel indices, so prompts need no shift (LiteMedSAM pads this way to 256x256).
    Raises ValueError when the image is larger than ``size``.
    """
    x = _plain_tensor(image)
    th, tw = _pair(size)
    h, w = x.shape[-2:]
    if h > th or w > tw:
        raise ValueError(f"cannot pad an image of size ({h}, {w}) to the smaller size ({th}, {tw}).")
    if (h, w) == (th, tw):
        return x.clone()
    return torch.nn.functional.pad(x, (0, tw - w, 0, th - h), mode="constant", value=value)


def minmax_normalise(x: torch.Tensor, eps: float = 1e-8, dim: int | Sequence[int] | None = None) -> torch.Tensor:
    """``(x - min) / clip(max - min, eps)`` into [0, 1] (LiteMedSAM's per-slice rule, after resizing).

    Args:
        x: tensor or array; integer input is computed in float32.
        eps: lower bound of the denominator (a constant image maps to 0).
        dim: dimensions the min/max are taken over; ``None`` (default, the reference) uses the whole tensor,
            all channels together. E.g. ``dim=(-3, -2, -1)`` normalises each ``(C, H, W)`` item of a batch.
    """
    t = torch.as_tensor(x) if not isinstance(x, torch.Tensor) else x
    if not t.is_floating_point():
        t = t.to(torch.float32)
    if dim is None:
        lo, hi = t.min(), t.max()
    else:
        dims = (dim,) if isinstance(dim, int) else tuple(dim)
        lo, hi = t.amin(dim=dims, keepdim=True), t.amax(dim=dims, keepdim=True)
    return (t - lo) / torch.clamp(hi - lo, min=eps)


def scale_coords_longest_side(coords, h: int, w: int, target: int = 256) -> torch.Tensor:
    """Map prompt coordinates of an ``(h, w)`` image to its longest-side-``target`` resize.

    Reference (LiteMedSAM inference) rule: ``floor(v * target / max(h, w))``, the same factor on every
    axis, so it applies unchanged to boxes ``[x0, y0, x1, y1]`` and points in this project's convention.
    Returns a float32 tensor of the same shape.
    """
    if h < 1 or w < 1 or target < 1:
        raise ValueError(f"sizes must be positive, got h={h}, w={w}, target={target}.")
    c = torch.as_tensor(coords, dtype=torch.float64)
    return torch.floor(c * target / max(h, w)).to(torch.float32)
