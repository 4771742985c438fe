"""How one 2D slice maps to a SAM network's square input and back.

Two published conventions:

* LiteMedSAM (``keep_aspect_ratio=True``): resize the longest side to ``image_size`` with area
  interpolation, pad bottom/right; boxes scale as ``int(v * S / max(H, W))``; low-res logits are
  cropped to the unpadded region before resizing back.
* MedSAM ViT-B (``keep_aspect_ratio=False``): stretch the slice to ``S x S`` (bicubic, antialiased,
  standing in for skimage's order-3 resize); boxes scale as ``v * S / [W, H, W, H]``.

Slices are ``(C, H, W)`` tensors with rows along ``y`` and columns along ``x`` (see ``common.transforms``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from common.transforms.resize import area_resize, longest_side_size, minmax_normalise


class SliceGeometry:
    """Resize/pad rules between a ``(H, W)`` slice and the network input ``(S, S)``.

    Args:
        height, width: slice size in pixels.
        image_size: network input size ``S`` (256 for LiteMedSAM, 1024 for MedSAM ViT-B).
        keep_aspect_ratio: LiteMedSAM rule (True) or MedSAM stretch (False).
        quantize: emulate the reference's uint8 images (expects the slice in [0, 255]): truncate the slice to
            integers (its ``uint8(...)`` cast of the windowed volume), resize, round half up (OpenCV on uint8).
    """

    def __init__(self, height: int, width: int, image_size: int, keep_aspect_ratio: bool = True, quantize: bool = True):
        self.height, self.width, self.size = int(height), int(width), int(image_size)
        self.keep_aspect_ratio = keep_aspect_ratio
        self.quantize = quantize
        if keep_aspect_ratio:
            self.new_h, self.new_w = longest_side_size(self.height, self.width, self.size)
        else:
            self.new_h = self.new_w = self.size

    def image(self, slice_chw: torch.Tensor) -> torch.Tensor:
        """``(C, H, W)`` slice (C = 1 or 3) -> ``(3, S, S)`` network input in [0, 1]."""
        x = slice_chw.float()
        if self.quantize:
            x = torch.floor(x).clamp(0, 255)
        if self.keep_aspect_ratio:
            x = area_resize(x, (self.new_h, self.new_w))
        else:
            x = F.interpolate(
                x[None], size=(self.size, self.size), mode="bicubic", antialias=True, align_corners=False
            )[0]
        if self.quantize:
            x = torch.floor(x + 0.5).clamp(0, 255)
        x = minmax_normalise(x)
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        return F.pad(x, (0, self.size - self.new_w, 0, self.size - self.new_h))

    def box_to_model(self, box_xyxy) -> torch.Tensor:
        """Inclusive slice-pixel box ``[x0, y0, x1, y1]`` -> float ``(4,)`` box at network scale."""
        b = torch.as_tensor(box_xyxy, dtype=torch.float64)
        if self.keep_aspect_ratio:
            return torch.floor(b * self.size / max(self.height, self.width)).float()
        scale = torch.tensor([self.width, self.height, self.width, self.height], dtype=torch.float64)
        return (b * self.size / scale).float()

    def logits_to_mask(self, low_res_logits: torch.Tensor) -> torch.Tensor:
        """``(..., L, L)`` low-res logits -> ``(..., H, W)`` bool mask (sigmoid > 0.5)."""
        low = low_res_logits.shape[-1]
        crop_h = round(self.new_h * low / self.size)
        crop_w = round(self.new_w * low / self.size)
        x = low_res_logits[..., :crop_h, :crop_w]
        lead = x.shape[:-2]
        x = F.interpolate(
            x.reshape(-1, 1, crop_h, crop_w).float(),
            size=(self.height, self.width),
            mode="bilinear",
            align_corners=False,
        )
        return (x > 0).reshape(*lead, self.height, self.width)

    def mask_to_model_box(self, mask_hw: torch.Tensor, margin: int, value: float = 1.0) -> torch.Tensor | None:
        """Tight box of a slice mask at network scale, widened by ``margin`` px and clamped to [0, S].

        The mask, holding ``value`` on the structure, is resized like the image (area rule), rounded half up and kept
        where non-zero: resized coverage >= 0.5 / value. The LiteMedSAM script resizes its label map, so ``value``
        is the box's label there; ``value=1`` gives a label-independent 0.5 coverage rule. Returns None when empty.
        """
        m = torch.floor(area_resize(mask_hw.float()[None] * value, (self.new_h, self.new_w))[0] + 0.5) > 0
        nz = torch.nonzero(m)
        if nz.numel() == 0:
            return None
        y0, x0 = nz.min(0).values.tolist()
        y1, x1 = nz.max(0).values.tolist()
        box = torch.tensor([x0 - margin, y0 - margin, x1 + margin, y1 + margin], dtype=torch.float32)
        return box.clamp(0, self.size)


class SamSliceInputd:
    """Dictionary transform: 2D slice image/label ``(C, X, Y)`` -> network-scale ``(3, S, S)`` / ``(1, S, S)``.

    Uses :class:`SliceGeometry`'s rules (image: resize, optional rounding, min-max to [0, 1], 3 channels, pad;
    label: nearest resize, pad with 0). Stays in the project's ``(x, y)`` axis order, so box prompts sampled
    afterwards are already in SAM's ``(x, y)`` order; transpose the two spatial axes (MONAI ``Transposed`` with
    ``indices=(0, 2, 1)``) last, to give SAM its rows-by-columns layout.

    Args:
        image_key, label_key: keys of the slice and its label (label optional).
        image_size, keep_aspect_ratio, quantize: see :class:`SliceGeometry`.
    """

    def __init__(
        self,
        image_key: str = "image",
        label_key: str | None = "label",
        image_size: int = 256,
        keep_aspect_ratio: bool = True,
        quantize: bool = True,
    ):
        self.image_key, self.label_key = image_key, label_key
        self.image_size, self.keep_aspect_ratio, self.quantize = image_size, keep_aspect_ratio, quantize

    def __call__(self, data):
        d = dict(data)
        image = torch.as_tensor(d[self.image_key])
        if image.ndim != 3:
            raise ValueError(
                f"'{self.image_key}': expected a channel-first 2D slice (C, X, Y), got {tuple(image.shape)}"
            )
        size_x, size_y = image.shape[1:]
        geometry = SliceGeometry(size_x, size_y, self.image_size, self.keep_aspect_ratio, self.quantize)
        d[self.image_key] = geometry.image(image.float())
        if self.label_key is not None and self.label_key in d:
            label = torch.as_tensor(d[self.label_key]).float()
            resized = F.interpolate(label[None], size=(geometry.new_h, geometry.new_w), mode="nearest-exact")[0]
            d[self.label_key] = F.pad(
                resized, (0, self.image_size - geometry.new_w, 0, self.image_size - geometry.new_h)
            )
        return d
