"""Prompt sampling from label maps (boxes and points, 2D and 3D), reproducible under a seed.

Coordinates follow the convention of :mod:`common.transforms`: inclusive voxel indices along the
spatial axes of the channel-first array, boxes ``[x0, y0, x1, y1]`` / ``[x0, y0, z0, x1, y1, z1]``,
points ``[x, y]`` / ``[x, y, z]``.

Why custom transforms: MONAI has no box or point *prompt* sampler. ``RandCropByPosNegLabeld`` samples
centres, not prompts, and ``monai.apps.deepedit`` / ``monai.apps.nuclick`` click generators are tied
to their own guidance formats. ``ApplyTransformToPointsd`` maps existing points through spatial
transforms and is what to use after sampling.

Box jitter (MedSAM / LiteMedSAM training): every side moves *outward* by an independent integer in
``[0, max_shift]`` **inclusive**. The published scripts draw ``random.randint(0, bbox_shift)`` from
Python's ``random`` module, whose upper bound is inclusive (unlike ``numpy.random.randint``), so
``max_shift`` itself can occur. Presets: MedSAM ``max_shift=20`` at the 1024 input scale, LiteMedSAM
``max_shift=5`` at 256 (10 in its multi-GPU dataset class); use them on labels already at that scale.
Boxes are clamped to ``[0, size - 1]`` (inclusive indices); the published scripts clamp the upper
corner to ``W``/``H`` instead, one past the last pixel, which can only differ by one pixel on boxes
touching the image border.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.transforms import MapTransform, Randomizable
from monai.utils import convert_to_dst_type

__all__ = ["bounding_box", "jitter_box", "RandBoxPromptd", "RandPointPromptd"]

RngLike = np.random.RandomState | np.random.Generator | None


def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    return t.as_tensor() if hasattr(t, "as_tensor") else t


def bounding_box(mask: NdarrayOrTensor) -> list[int]:
    """Inclusive box of the non-zero voxels of a spatial mask (no channel axis).

    ``(X, Y)`` -> ``[x0, y0, x1, y1]``; ``(X, Y, Z)`` -> ``[x0, y0, z0, x1, y1, z1]`` (axis order of the
    array, see :mod:`common.transforms`).

    Raises:
        ValueError: the mask is empty, or not 2D/3D.
    """
    m = _as_tensor(mask)
    if m.ndim not in (2, 3):
        raise ValueError(f"bounding_box expects a 2D (X, Y) or 3D (X, Y, Z) mask, got shape {tuple(m.shape)}.")
    m = m != 0
    lows, highs = [], []
    for axis in range(m.ndim):
        others = tuple(a for a in range(m.ndim) if a != axis)
        present = torch.nonzero(m.any(dim=others)).flatten()
        if present.numel() == 0:
            raise ValueError(f"bounding_box: the mask of shape {tuple(m.shape)} is empty.")
        lows.append(int(present[0]))
        highs.append(int(present[-1]))
    return lows + highs


def _per_axis(value: int | Sequence[int], ndim: int, name: str) -> list[int]:
    values = [int(value)] * ndim if isinstance(value, (int, np.integer)) else [int(v) for v in value]
    if len(values) != ndim or min(values) < 0:
        raise ValueError(f"{name} must be a non-negative int or {ndim} of them, got {value!r}.")
    return values


def _randint(rng: np.random.RandomState | np.random.Generator, high_inclusive: int) -> int:
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(0, high_inclusive + 1))
    return int(rng.randint(0, high_inclusive + 1))  # RandomState (MONAI's self.R): exclusive high


def jitter_box(
    box: Sequence[int], max_shift: int | Sequence[int], spatial_shape: Sequence[int], rng: RngLike = None
) -> list[int]:
    """Move every side of ``box`` outward by an independent integer in ``[0, max_shift]`` (inclusive).

    Inclusive like MedSAM's ``random.randint(0, bbox_shift)`` (Python's ``random``, not numpy: see the
    module docstring). The result is clamped to ``[0, size - 1]``; with ``max_shift=0`` the box is
    returned unchanged. Draws are made in box order (``x0, y0, [z0,] x1, y1, [z1]``), always
    ``2 * ndim`` of them, so the random stream does not depend on the values.

    Args:
        box: ``[x0, y0, x1, y1]`` or ``[x0, y0, z0, x1, y1, z1]``, inclusive, inside ``spatial_shape``.
        max_shift: one bound for every axis, or one per spatial axis (e.g. ``(5, 5, 0)`` keeps z tight).
        spatial_shape: ``(X, Y)`` or ``(X, Y, Z)``.
        rng: ``numpy.random.RandomState`` (MONAI ``Randomizable.R``) or ``numpy.random.Generator``;
            ``None`` uses a fresh unseeded generator.
    """
    shape = [int(s) for s in spatial_shape]
    ndim = len(shape)
    b = [int(v) for v in box]
    if ndim not in (2, 3) or len(b) != 2 * ndim:
        raise ValueError(f"box {list(box)} does not match spatial shape {shape} (need 2*ndim values, ndim 2 or 3).")
    lo, hi = b[:ndim], b[ndim:]
    if any(not 0 <= lo[a] <= hi[a] < shape[a] for a in range(ndim)):
        raise ValueError(f"box {b} is not an inclusive box inside spatial shape {shape}.")
    shifts = _per_axis(max_shift, ndim, "max_shift")
    rng = np.random.default_rng() if rng is None else rng
    down = [_randint(rng, shifts[a]) for a in range(ndim)]
    up = [_randint(rng, shifts[a]) for a in range(ndim)]
    return [max(0, lo[a] - down[a]) for a in range(ndim)] + [min(shape[a] - 1, hi[a] + up[a]) for a in range(ndim)]


class _LabelPromptBase(Randomizable, MapTransform):
    """Shared part: validate the channel-first label, list its foreground values, pick one, build the target."""

    def __init__(
        self,
        label_key: str,
        target_key: str | None,
        label_value_key: str | None,
        labels: Sequence[int | float] | None,
        allow_missing_keys: bool,
    ) -> None:
        MapTransform.__init__(self, keys=label_key, allow_missing_keys=allow_missing_keys)
        self.label_key = label_key
        self.target_key = target_key
        self.label_value_key = label_value_key
        self.labels = None if labels is None else [float(v) for v in labels]
        if self.labels is not None and (not self.labels or 0.0 in self.labels):
            raise ValueError(f"labels must be a non-empty list of foreground (non-zero) values, got {labels!r}.")
        self._value: float | None = None
        self._mask: torch.Tensor | None = None

    @staticmethod
    def _where(data: Mapping, key: Hashable) -> str:
        meta = getattr(data[key], "meta", None) or data.get(f"{key}_meta_dict") or {}
        source = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
        return f" (file {source})" if source else ""

    def _spatial_label(self, data: Mapping, key: Hashable) -> torch.Tensor:
        label = _as_tensor(data[key])
        if label.ndim not in (3, 4) or label.shape[0] != 1:
            raise ValueError(
                f"{type(self).__name__}: key {key!r}{self._where(data, key)}: expected a channel-first label "
                f"(1, X, Y) or (1, X, Y, Z), got shape {tuple(label.shape)}."
            )
        return label[0]

    def _present_values(self, data: Mapping, key: Hashable, label: torch.Tensor) -> list[float]:
        if self.labels is None:
            values = [float(v) for v in torch.unique(label).tolist() if v != 0]
            if not values:
                raise ValueError(
                    f"{type(self).__name__}: key {key!r}{self._where(data, key)}: the label has no foreground "
                    f"(all {label.numel()} voxels are 0); a prompt needs a structure."
                )
            return values
        values = [v for v in self.labels if bool((label == v).any())]
        if not values:
            raise ValueError(
                f"{type(self).__name__}: key {key!r}{self._where(data, key)}: none of the requested labels "
                f"{self.labels} is present (values found: {sorted(set(torch.unique(label).tolist()))[:20]})."
            )
        return values

    def _choose_value(self, values: Sequence[float]) -> float:
        return values[int(self.R.randint(len(values)))]

    def _drawn(self) -> tuple[float, torch.Tensor]:
        """The value and mask chosen by the last ``randomize``."""
        if self._value is None or self._mask is None:
            raise RuntimeError(f"{type(self).__name__}: randomize() has not drawn a label value yet.")
        return self._value, self._mask

    def _write_target(self, d: dict, key: Hashable, mask: torch.Tensor, value: float) -> None:
        if self.target_key is not None:
            d[self.target_key] = convert_to_dst_type(mask[None], dst=d[key], dtype=torch.float32)[0]
        if self.label_value_key is not None:
            d[self.label_value_key] = int(value) if float(value).is_integer() else value


class RandBoxPromptd(_LabelPromptBase):
    """Random box prompt from a channel-first label map, as in MedSAM / LiteMedSAM training.

    Picks one foreground value present in ``data[label_key]`` (uniformly; restricted to ``labels``
    when given), then writes

    * ``target_key``: the binary target ``label == value``, float32, same shape and meta as the label;
    * ``box_key``: its tight box jittered outward by ``[0, max_shift]`` per side (:func:`jitter_box`),
      a float32 tensor of shape (4,) ``[x0, y0, x1, y1]`` or (6,) ``[x0, y0, z0, x1, y1, z1]``;
    * ``label_value_key``: the chosen value (int when integral).

    Presets: MedSAM ``max_shift=20`` with labels at 1024x1024; LiteMedSAM ``max_shift=5`` at 256x256.
    ``max_shift`` may be one value per spatial axis. Set ``target_key`` / ``label_value_key`` to None to
    skip those outputs. Reproducible under ``set_random_state``.

    Raises:
        ValueError: the label is not ``(1, X, Y[, Z])``, has no foreground, or none of ``labels``; the
            message names the key and the file (``filename_or_obj``) when known.
    """

    def __init__(
        self,
        label_key: str = "label",
        box_key: str = "box",
        target_key: str | None = "target",
        label_value_key: str | None = "box_label",
        max_shift: int | Sequence[int] = 5,
        labels: Sequence[int | float] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(label_key, target_key, label_value_key, labels, allow_missing_keys)
        self.box_key = box_key
        if isinstance(max_shift, (int, np.integer)):
            if max_shift < 0:
                raise ValueError(f"max_shift must be >= 0, got {max_shift}.")
        else:
            _per_axis(max_shift, len(max_shift), "max_shift")
        self.max_shift = max_shift
        self._box: list[int] | None = None

    def randomize(self, label: torch.Tensor, values: Sequence[float] | None = None) -> None:
        """Choose a value among ``values`` of the spatial ``label`` and draw the jittered box of its mask.

        ``values`` is required; its ``None`` default only keeps the signature of ``Randomizable.randomize``.
        """
        if values is None:
            raise TypeError(f"{type(self).__name__}.randomize() needs the candidate label values.")
        self._value = self._choose_value(values)
        self._mask = label == self._value
        self._box = jitter_box(bounding_box(self._mask), self.max_shift, tuple(self._mask.shape), rng=self.R)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = self._spatial_label(d, key)
            self.randomize(label, self._present_values(d, key, label))
            value, mask = self._drawn()
            d[self.box_key] = torch.tensor(self._box, dtype=torch.float32)
            self._write_target(d, key, mask, value)
        return d


class RandPointPromptd(_LabelPromptBase):
    """Random point prompts from a channel-first label map: positives inside one structure, negatives outside.

    Picks one foreground value as :class:`RandBoxPromptd` does, then samples ``num_positive`` voxels
    uniformly inside ``label == value`` and ``num_negative`` voxels uniformly outside it (background and
    other structures), without replacement while enough voxels exist. Writes

    * ``point_key``: float32 ``(num_positive + num_negative, ndim)`` voxel indices ``[x, y(, z)]``,
      positives first;
    * ``point_label_key``: int64 ``(N,)``, 1 for positive and 0 for negative points (SAM's labels);
    * ``target_key`` and ``label_value_key`` as :class:`RandBoxPromptd`.

    Reproducible under ``set_random_state``.

    Raises:
        ValueError: as :class:`RandBoxPromptd`, and when negatives are asked for but the structure fills
            the whole image.
    """

    def __init__(
        self,
        label_key: str = "label",
        point_key: str = "points",
        point_label_key: str = "point_labels",
        target_key: str | None = "target",
        num_positive: int = 1,
        num_negative: int = 0,
        labels: Sequence[int | float] | None = None,
        label_value_key: str | None = "point_label_value",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(label_key, target_key, label_value_key, labels, allow_missing_keys)
        if num_positive < 0 or num_negative < 0 or num_positive + num_negative == 0:
            raise ValueError(
                f"need num_positive, num_negative >= 0 and at least one point, got {num_positive}, {num_negative}."
            )
        self.point_key = point_key
        self.point_label_key = point_label_key
        self.num_positive = int(num_positive)
        self.num_negative = int(num_negative)

    def _sample_inside(self, flat_mask: torch.Tensor, k: int) -> torch.Tensor:
        idx = torch.nonzero(flat_mask).flatten()
        sel = self.R.choice(idx.numel(), size=k, replace=idx.numel() < k)
        return idx[torch.as_tensor(sel, dtype=torch.long, device=idx.device)]

    def _sample_outside(self, flat_mask: torch.Tensor, k: int) -> torch.Tensor:
        """Uniform without replacement over ``~flat_mask``; rejection sampling avoids listing a large background."""
        n = flat_mask.numel()
        found: dict[int, None] = {}
        for _ in range(8):
            cand = self.R.randint(0, n, size=4 * k + 16)
            keep = ~flat_mask[torch.as_tensor(cand, dtype=torch.long, device=flat_mask.device)].cpu().numpy()
            for c in cand[keep]:
                found.setdefault(int(c), None)
                if len(found) == k:
                    return torch.as_tensor(list(found), dtype=torch.long)
        return self._sample_inside(~flat_mask, k)  # small background: enumerate it

    def randomize(self, label: torch.Tensor, values: Sequence[float] | None = None) -> None:
        """Choose a value among ``values`` of the spatial ``label`` and draw the flat indices of the points.

        ``values`` is required; its ``None`` default only keeps the signature of ``Randomizable.randomize``.
        """
        if values is None:
            raise TypeError(f"{type(self).__name__}.randomize() needs the candidate label values.")
        self._value = self._choose_value(values)
        self._mask = label == self._value
        flat = self._mask.flatten()
        chosen = []
        if self.num_positive:
            chosen.append(self._sample_inside(flat, self.num_positive).cpu())
        if self.num_negative:
            if bool(flat.all()):
                raise ValueError(
                    f"label value {self._value} fills the whole image, so there is no voxel for the "
                    f"{self.num_negative} negative point(s)."
                )
            chosen.append(self._sample_outside(flat, self.num_negative).cpu())
        self._indices = torch.cat(chosen)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = self._spatial_label(d, key)
            values = self._present_values(d, key, label)
            try:
                self.randomize(label, values)
            except ValueError as err:
                raise ValueError(f"{type(self).__name__}: key {key!r}{self._where(d, key)}: {err}") from err
            value, mask = self._drawn()
            coords = np.stack(np.unravel_index(self._indices.numpy(), tuple(mask.shape)), axis=-1)
            d[self.point_key] = torch.as_tensor(coords, dtype=torch.float32)
            d[self.point_label_key] = torch.tensor([1] * self.num_positive + [0] * self.num_negative, dtype=torch.int64)
            self._write_target(d, key, mask, value)
        return d
