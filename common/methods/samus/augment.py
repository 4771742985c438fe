"""SAMUS's training augmentation (spec 1.10, ``JointTransform2D`` as instantiated for training), in its order:
gamma (p 0.5) -> rotation (p 0.5, MONAI ``RandRotated``) -> zoom-in with a random crop (p 0.5) -> contrast (p 0.5)
-> the final resize (:class:`~common.methods.samus.frames.ResizeFramed`).

Images are grey ``(1, X, Y)`` in 0..255, labels ``(1, X, Y)``. MONAI's ``RandAdjustContrastd`` draws a continuous
gamma and ``RandZoomd`` crops at the centre, so the three transforms below follow the published rules instead.
Differences from upstream: values stay float (upstream truncates to uint8 after the gamma step).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform

__all__ = ["RandContrastd", "RandGammad", "RandZoomCropd"]


class RandGammad(RandomizableTransform, MapTransform):
    """With probability ``prob``: ``255 * (x / 255) ** (1 / g)``, ``g = randint(10, 25) / 10`` (1.0 ... 2.4)."""

    def __init__(self, keys: KeysCollection, prob: float = 0.5) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.gamma = 1.0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self.gamma = self.R.randint(10, 26) / 10.0

    def __call__(self, data):
        d = dict(data)
        self.randomize()
        if self._do_transform:
            for key in self.key_iterator(d):
                d[key] = 255.0 * (d[key].clamp(0, 255) / 255.0) ** (1.0 / self.gamma)
        return d


class RandZoomCropd(RandomizableTransform, MapTransform):
    """With probability ``prob``: resize image (bilinear) and label (nearest) to ``int(size * s)`` square,
    ``s ~ U(1.0, max_scale)``, then crop ``size x size`` at a random place (upstream: centre crop disabled).

    ``keys``: image keys; ``label_keys``: nearest-resized keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_keys: Sequence[str] | str = (),
        size: int = 256,
        max_scale: float = 1.3,
        prob=0.5,
    ) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.label_keys = [label_keys] if isinstance(label_keys, str) else list(label_keys)
        self.size, self.max_scale = int(size), float(max_scale)
        self.side, self.start = self.size, (0, 0)

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self.side = int(self.size * self.R.uniform(1.0, self.max_scale))
        room = self.side - self.size
        self.start = (self.R.randint(0, room + 1), self.R.randint(0, room + 1))

    def _apply(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        kwargs = {"align_corners": False} if mode == "bilinear" else {}
        grown = F.interpolate(x[None].float(), size=(self.side, self.side), mode=mode, **kwargs)[0]
        (i, j), s = self.start, self.size
        return grown[:, i : i + s, j : j + s].to(x.dtype)

    def __call__(self, data):
        d = dict(data)
        self.randomize()
        if self._do_transform:
            for key in self.key_iterator(d):
                d[key] = self._apply(d[key], "bilinear")
            for key in self.label_keys:
                d[key] = self._apply(d[key], "nearest-exact")
        return d


class RandContrastd(RandomizableTransform, MapTransform):
    """With probability ``prob``: blend with the image mean, ``mean + f * (x - mean)``, ``f ~ U(low, high)``,
    clamped to 0..255 (torchvision's ``ColorJitter(contrast=(0.8, 2.0))`` on a grey image)."""

    def __init__(self, keys: KeysCollection, low: float = 0.8, high: float = 2.0, prob: float = 0.5) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.low, self.high, self.factor = float(low), float(high), 1.0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self.factor = self.R.uniform(self.low, self.high)

    def __call__(self, data):
        d = dict(data)
        self.randomize()
        if self._do_transform:
            for key in self.key_iterator(d):
                x = d[key]
                mean = x.mean()
                d[key] = (mean + self.factor * (x - mean)).clamp(0, 255)
        return d
