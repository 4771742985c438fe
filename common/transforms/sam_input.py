"""The SAM input contract: how images and prompts become a SAM network's input, and outputs come back.

Every transform, inferer and network of the project that feeds a SAM encoder uses these rules; ``Sam`` itself
applies none of them (it takes images at the encoder's size, already normalised).

* **Axis order.** Project arrays are ``(..., X, Y)`` (array axes as stored, see :mod:`common.transforms`); SAM takes
  images rows-by-columns, ``(..., H = Y, W = X)``: :func:`to_sam_layout` (its own inverse). Point and box
  coordinates keep their order: the project's ``(x, y)`` is SAM's ``(x, y)``. Volumes become axial slices with
  :func:`volume_to_slices` and come back with :func:`slices_to_volume`.
* **Pixel values.** The encoder input is 3 channels at ``S x S``. :data:`PIXEL_CONVENTIONS`: ``"unit"`` feeds
  [0, 1] images as they are (MedSAM, LiteMedSAM, SAMUS, SAMIHS); ``"imagenet"`` is original SAM's
  ``(255 x - mean) / std`` (Medical SAM Adapter): :func:`normalise_pixels`.
* **Size.** Longest side to ``S`` and pad bottom/right, or stretch to ``S x S``: :class:`SliceGeometry` (per slice,
  the published MedSAM rules incl. interpolation and rounding), :func:`stretch_to` (batched bilinear, MSA).
* **Prompts.** Boxes and points scale by the same rule as the image (:meth:`SliceGeometry.box_to_model`,
  :meth:`SliceGeometry.points_to_model`, :func:`stretch_scale`); a dense mask prompt is resized like the image to
  the prompt encoder's ``mask_input_size`` and padded with a strongly negative logit
  (:meth:`SliceGeometry.mask_prompt_to_model`, :func:`logit_from_probability`).
* **Outputs.** Low-res logits are cropped to the unpadded region and resized back
  (:meth:`SliceGeometry.logits_to_image`; box propagation takes logit > 0 as the mask and keeps the logits to
  settle overlaps; MSA resizes logits back with :func:`stretch_to` and keeps them as logits).

The two published MedSAM size conventions of :class:`SliceGeometry`:

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
from monai.config import KeysCollection
from monai.transforms import Transposed

from common.transforms.resize import area_resize, longest_side_size, minmax_normalise

__all__ = [
    "PIXEL_CONVENTIONS",
    "SAM_PIXEL_MEAN",
    "SAM_PIXEL_STD",
    "SamSliceInputd",
    "SliceGeometry",
    "ToSamLayoutd",
    "logit_from_probability",
    "normalise_pixels",
    "slices_to_volume",
    "stretch_scale",
    "stretch_to",
    "to_sam_layout",
    "volume_to_slices",
]

#: Original SAM's pixel normalisation: ImageNet mean/std on 0..255.
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
#: How a [0, 1] image becomes the encoder input: as is ("unit"), or SAM's ImageNet normalisation ("imagenet").
PIXEL_CONVENTIONS = ("unit", "imagenet")
#: Logit given to the padded part of a dense mask prompt (background must be negative, not 0: addendum 4.2).
MASK_PAD_LOGIT = -20.0


def to_sam_layout(x: torch.Tensor) -> torch.Tensor:
    """Project ``(..., X, Y)`` -> SAM rows-by-columns ``(..., Y, X)`` (a transpose of the last two axes; the
    inverse is the same call)."""
    return x.transpose(-1, -2)


def volume_to_slices(volume: torch.Tensor) -> torch.Tensor:
    """Axial slices in SAM layout: ``(B, C, X, Y, Z) -> (B * Z, C, Y, X)``, ordered (volume, z)."""
    b, c, x, y, z = volume.shape
    return volume.permute(0, 4, 1, 3, 2).reshape(b * z, c, y, x)


def slices_to_volume(slices: torch.Tensor, batch: int) -> torch.Tensor:
    """Inverse of :func:`volume_to_slices`: ``(B * Z, C, Y, X) -> (B, C, X, Y, Z)``."""
    bz, c, y, x = slices.shape
    return slices.reshape(batch, bz // batch, c, y, x).permute(0, 2, 4, 3, 1)


def normalise_pixels(images: torch.Tensor, convention: str) -> torch.Tensor:
    """``(B, 3, S, S)`` images in [0, 1] -> encoder input under ``convention`` (:data:`PIXEL_CONVENTIONS`)."""
    if convention == "unit":
        return images
    if convention == "imagenet":
        mean = images.new_tensor(SAM_PIXEL_MEAN).view(1, 3, 1, 1)
        std = images.new_tensor(SAM_PIXEL_STD).view(1, 3, 1, 1)
        return (images * 255.0 - mean) / std
    raise ValueError(f"pixel convention must be one of {PIXEL_CONVENTIONS}, got {convention!r}")


def stretch_to(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (``align_corners=False``, no antialiasing) of ``(N, C, h, w)`` to ``(N, C, *size)``."""
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


def stretch_scale(slice_xy: tuple[int, int], size: tuple[int, int], device=None) -> torch.Tensor:
    """Factors ``(2,)`` that map ``(x, y)`` points of an ``X x Y`` slice to a stretched ``size = (H, W)`` input."""
    return torch.tensor([size[1] / slice_xy[0], size[0] / slice_xy[1]], device=device)


def logit_from_probability(prob: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """``logit(clip(p, eps, 1 - eps))`` (about +-9.2 for the default): a probability map as a dense mask prompt."""
    return torch.logit(prob.float().clamp(eps, 1.0 - eps))


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

    def points_to_model(self, points_xy) -> torch.Tensor:
        """Slice-pixel points ``(..., 2)`` ``(x, y)`` -> float points at network scale, by the box rule."""
        p = torch.as_tensor(points_xy, dtype=torch.float64)
        if self.keep_aspect_ratio:
            return torch.floor(p * self.size / max(self.height, self.width)).float()
        return (p * p.new_tensor([self.size / self.width, self.size / self.height])).float()

    def mask_prompt_to_model(self, logits_hw: torch.Tensor, mask_size: int) -> torch.Tensor:
        """A slice-grid mask prompt in logit scale ``(H, W)`` -> ``(1, mask_size, mask_size)``, the prompt
        encoder's ``mask_input_size`` (4x the embedding): resized (bilinear) like the image to the unpadded
        region, the padding set to :data:`MASK_PAD_LOGIT`."""
        if tuple(logits_hw.shape) != (self.height, self.width):
            raise ValueError(
                f"mask prompt must be the slice's (H, W) = ({self.height}, {self.width}), got {tuple(logits_hw.shape)}"
            )
        crop_h = round(self.new_h * mask_size / self.size)
        crop_w = round(self.new_w * mask_size / self.size)
        x = F.interpolate(logits_hw.float()[None, None], size=(crop_h, crop_w), mode="bilinear", align_corners=False)
        return F.pad(x[0], (0, mask_size - crop_w, 0, mask_size - crop_h), value=MASK_PAD_LOGIT)

    def logits_to_image(self, low_res_logits: torch.Tensor) -> torch.Tensor:
        """``(..., L, L)`` low-res logits -> ``(..., H, W)`` float32 logits on the image grid (padding cropped,
        bilinear)."""
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
        return x.reshape(*lead, self.height, self.width)

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


class ToSamLayoutd(Transposed):
    """Dictionary transform: :func:`to_sam_layout` for channel-first 2D items, ``(C, X, Y) -> (C, Y, X)`` (MONAI's
    ``Transposed`` with ``indices=(0, 2, 1)``).

    The last step before a 2D SAM network: box prompts sampled earlier in the project's ``(x, y)`` order stay valid.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, indices=(0, 2, 1), allow_missing_keys=allow_missing_keys)


class SamSliceInputd:
    """Dictionary transform: 2D slice image/label ``(C, X, Y)`` -> network-scale ``(3, S, S)`` / ``(1, S, S)``.

    Uses :class:`SliceGeometry`'s rules (image: resize, optional rounding, min-max to [0, 1], 3 channels, pad;
    label: nearest resize, pad with 0). Stays in the project's ``(x, y)`` axis order, so box prompts sampled
    afterwards are already in SAM's ``(x, y)`` order; :class:`ToSamLayoutd` comes last.

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
