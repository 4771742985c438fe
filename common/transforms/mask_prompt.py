"""External probability maps as SAM dense mask prompts (addendum 4.2: the SAMIHS polyp variant feeds PNS+ maps).

A map of any size (PNS+ writes 256 x 448 uint8 PNGs) becomes the prompt encoder's ``mask_input_size`` input
``(1, M, M)`` (4x the embedding: 256 at 1024 px) in three steps, so training can perturb the map in between:

1. :class:`ResizeMaskPromptd`: 0..255 (or [0, 1]) -> probability [0, 1], resized bilinearly to ``M x M`` like the
   image (the SAMIHS square stretch; the longest-side-and-pad rule pads with a negative logit instead:
   :meth:`common.transforms.sam_input.SliceGeometry.mask_prompt_to_model`). An item without a map gets zeros and
   ``mask_present = False`` (the network then uses ``no_mask_embed`` for it).
2. :class:`RandPerturbMaskPromptd` (training only): shift, erode or dilate, noise on the boundary band, and drop the
   map with probability ``drop_prob``, so the model learns to correct the external network, not to copy it.
3. :class:`MaskPromptLogitsd`: probability -> logit scale, ``logit(clip(p))`` (about +-9.2) or, for binary maps,
   +-10 (SAM2's convention). The background must be negative, not 0 (a 0/1 map lands elsewhere in the embedding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform

from common.errors import InvalidInputError
from common.methods.samus.frames import resize_frame
from common.transforms.sam_input import logit_from_probability

__all__ = [
    "MASK_SCALES",
    "MaskPromptLogitsd",
    "RandPerturbMaskPromptd",
    "ResizeMaskPromptd",
    "mask_prompt_logits",
    "probability_map",
]

#: How a probability map becomes logits: ``logit(clip(p, eps, 1 - eps))``, or +-10 around ``threshold``.
MASK_SCALES = ("logit", "binary")
BINARY_LOGIT = 10.0


def probability_map(x) -> torch.Tensor:
    """A map as float probabilities in [0, 1]: 8-bit values (max > 1) are divided by 255."""
    p = torch.as_tensor(x).float()
    if not torch.isfinite(p).all() or p.min() < 0:
        raise ValueError("a probability map must hold finite values >= 0 (0..255 or 0..1)")
    return p / 255.0 if p.max() > 1.0 else p


def mask_prompt_logits(prob: torch.Tensor, scale: str = "logit", eps: float = 1e-4, threshold: float = 0.5):
    """Probabilities -> dense-prompt logits under ``scale`` (:data:`MASK_SCALES`)."""
    if scale == "logit":
        return logit_from_probability(prob, eps)
    if scale == "binary":
        return torch.where(prob >= threshold, BINARY_LOGIT, -BINARY_LOGIT).float()
    raise ValueError(f"mask prompt scale must be one of {MASK_SCALES}, got {scale!r}")


class ResizeMaskPromptd(MapTransform):
    """``keys``: a map ``(1, X', Y')`` (any size, 0..255 or [0, 1]) -> probability ``(1, size, size)`` float;
    ``present_key`` -> True. A missing or None map gives zeros and False."""

    def __init__(self, keys: KeysCollection, size: int = 256, present_key: str = "mask_present") -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.size, self.present_key = int(size), present_key

    def __call__(self, data):
        d = dict(data)
        for key in self.keys:
            present = d.get(key) is not None
            if present:
                x = d[key]
                if x.ndim != 3 or x.shape[0] != 1:
                    source = getattr(x, "meta", {}).get("filename_or_obj", key)
                    raise InvalidInputError(f"{source}: expected a one-channel (grey) map, got shape {tuple(x.shape)}")
                d[key] = resize_frame(probability_map(x), self.size, "bilinear").clamp(0.0, 1.0)
            else:
                d[key] = torch.zeros(1, self.size, self.size)
            d[self.present_key] = torch.tensor(present)
        return d


def _dilate(x: torch.Tensor, radius: int) -> torch.Tensor:
    return F.max_pool2d(x[None], 2 * radius + 1, stride=1, padding=radius)[0]


def _erode(x: torch.Tensor, radius: int) -> torch.Tensor:
    return -_dilate(-x, radius)


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``(C, H, W)`` moved by ``dy`` rows and ``dx`` columns; zeros enter."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)))
    return padded[:, max(-dy, 0) : max(-dy, 0) + h, max(-dx, 0) : max(-dx, 0) + w]


class RandPerturbMaskPromptd(RandomizableTransform, MapTransform):
    """Training-time damage to a probability prompt ``(1, M, M)`` (after :class:`ResizeMaskPromptd`).

    Each applied with probability ``prob``: a shift by up to ``max_shift`` of the size per axis (zeros enter),
    erosion or dilation (even odds) with a radius of 1..``max_radius`` px, and a band of ``band`` px around the
    map's 0.5 boundary replaced by smoothed noise (HQ-SAM's noisy-boundary idea). Then the map is dropped (zeros,
    ``present_key`` False) with probability ``drop_prob`` (about 0.2 in addendum 4.2).
    """

    def __init__(
        self,
        keys: KeysCollection,
        present_key: str = "mask_present",
        prob: float = 0.5,
        max_shift: float = 0.05,
        max_radius: int = 4,
        band: int = 3,
        drop_prob: float = 0.2,
    ) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.present_key, self.p = present_key, float(prob)
        self.max_shift, self.max_radius, self.band, self.drop_prob = float(max_shift), int(max_radius), band, drop_prob

    def _perturb(self, x: torch.Tensor) -> torch.Tensor:
        rng, size = self.R, x.shape[-1]
        if rng.rand() < self.p:
            limit = int(self.max_shift * size)
            dy, dx = (int(v) for v in rng.randint(-limit, limit + 1, size=2))
            x = _shift(x, dy, dx)
        if rng.rand() < self.p:
            radius = int(rng.randint(1, self.max_radius + 1))
            x = _dilate(x, radius) if rng.rand() < 0.5 else _erode(x, radius)
        if rng.rand() < self.p:
            binary = (x >= 0.5).float()
            band = (_dilate(binary, self.band) - _erode(binary, self.band)) > 0
            noise = torch.as_tensor(rng.rand(*x.shape), dtype=x.dtype)
            noise = F.avg_pool2d(noise[None], 5, stride=1, padding=2, count_include_pad=False)[0]
            x = torch.where(band, ((noise - 0.5) * 4 + 0.5).clamp(0, 1), x)
        return x

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            if not bool(d.get(self.present_key, True)):
                continue
            x = self._perturb(torch.as_tensor(d[key]).float().clone())
            if self.R.rand() < self.drop_prob:
                x, d[self.present_key] = torch.zeros_like(x), torch.tensor(False)
            d[key] = x
        return d


class MaskPromptLogitsd(MapTransform):
    """Probability prompt ``(1, M, M)`` -> logits by :func:`mask_prompt_logits`; absent maps (``present_key``
    False) stay zeros (the network ignores them)."""

    def __init__(
        self,
        keys: KeysCollection,
        scale: str = "logit",
        eps: float = 1e-4,
        threshold: float = 0.5,
        present_key: str = "mask_present",
    ) -> None:
        super().__init__(keys)
        if scale not in MASK_SCALES:
            raise ValueError(f"mask prompt scale must be one of {MASK_SCALES}, got {scale!r}")
        self.scale, self.eps, self.threshold, self.present_key = scale, float(eps), float(threshold), present_key

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            if bool(d.get(self.present_key, True)):
                d[key] = mask_prompt_logits(torch.as_tensor(d[key]), self.scale, self.eps, self.threshold)
        return d
