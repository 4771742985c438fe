"""The SAM input contract (common.transforms.sam_input): axis order, pixel conventions, prompt and mask scaling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.transforms import Transposed

from common.transforms.sam_input import (
    MASK_PAD_LOGIT,
    SAM_PIXEL_MEAN,
    SAM_PIXEL_STD,
    SliceGeometry,
    ToSamLayoutd,
    logit_from_probability,
    normalise_pixels,
    slices_to_volume,
    stretch_scale,
    stretch_to,
    to_sam_layout,
    volume_to_slices,
)


def test_axis_order_of_slices_and_volumes():
    vol = torch.arange(2 * 1 * 4 * 3 * 5, dtype=torch.float32).reshape(2, 1, 4, 3, 5)  # (B, C, X, Y, Z)
    slices = volume_to_slices(vol)
    assert slices.shape == (10, 1, 3, 4)  # (B * Z, C, Y, X)
    # slice (b=1, z=2): rows along y, columns along x
    torch.testing.assert_close(slices[1 * 5 + 2, 0], vol[1, 0, :, :, 2].T)
    torch.testing.assert_close(to_sam_layout(vol[1, 0, :, :, 2]), slices[7, 0])
    torch.testing.assert_close(slices_to_volume(slices, 2), vol)
    torch.testing.assert_close(to_sam_layout(to_sam_layout(vol)), vol)
    d = ToSamLayoutd(["image", "label"])({"image": vol[0, :, :, :, 0], "label": vol[1, :, :, :, 0]})
    ref = Transposed(["image"], indices=(0, 2, 1))({"image": vol[0, :, :, :, 0]})
    torch.testing.assert_close(d["image"], ref["image"])
    torch.testing.assert_close(d["label"], to_sam_layout(vol[1, :, :, :, 0]))


def test_pixel_conventions():
    x = torch.rand(2, 3, 4, 4)
    assert normalise_pixels(x, "unit") is x
    got = normalise_pixels(x, "imagenet")
    for c in range(3):
        torch.testing.assert_close(got[:, c], (x[:, c] * 255 - SAM_PIXEL_MEAN[c]) / SAM_PIXEL_STD[c])
    with pytest.raises(ValueError, match="pixel convention"):
        normalise_pixels(x, "zscore")


def test_stretched_points_land_on_the_same_pixel():
    """A point on a marked pixel of an X x Y slice, scaled by stretch_scale, lands on the marked region of the
    stretched image (SAM's (x, y) = columns, rows of the SAM-layout image)."""
    x, y, size = 40, 25, (64, 64)
    sl = torch.zeros(x, y)
    sl[30, 10] = 1.0
    image = stretch_to(to_sam_layout(sl)[None, None], size)[0, 0]
    px, py = (torch.tensor([30.0, 10.0]) * stretch_scale((x, y), size)).tolist()
    assert image.argmax() == round(py) * 64 + round(px)


@pytest.mark.parametrize("keep_aspect_ratio", [True, False])
def test_slice_geometry_points_follow_the_box_rule(keep_aspect_ratio):
    g = SliceGeometry(100, 60, 256, keep_aspect_ratio=keep_aspect_ratio)
    box = [5, 7, 50, 90]  # [x0, y0, x1, y1]
    points = torch.tensor([[5.0, 7.0], [50.0, 90.0]])
    torch.testing.assert_close(g.points_to_model(points).reshape(-1), g.box_to_model(box))


def test_dense_mask_prompt_resized_like_the_image_and_padded_negative():
    g = SliceGeometry(100, 60, 256, keep_aspect_ratio=True)  # content 256 x 154 after the longest-side resize
    logits = torch.full((100, 60), -5.0)
    logits[40:60, 10:30] = 5.0
    m = g.mask_prompt_to_model(logits, mask_size=64)
    assert m.shape == (1, 64, 64)
    crop_w = round(g.new_w * 64 / 256)
    assert (m[0, :, crop_w:] == MASK_PAD_LOGIT).all() and (m[0, :, :crop_w] > MASK_PAD_LOGIT).all()
    expected = F.interpolate(logits[None, None], size=(64, crop_w), mode="bilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(m[0, :, :crop_w], expected)
    stretched = SliceGeometry(100, 60, 256, keep_aspect_ratio=False).mask_prompt_to_model(logits, 64)
    assert (stretched > MASK_PAD_LOGIT).all()  # no padding when stretching
    with pytest.raises(ValueError, match="mask prompt must be the slice's"):
        g.mask_prompt_to_model(logits.T, mask_size=64)
    p = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(logit_from_probability(p), torch.tensor([-9.2102, 0.0, 9.2102]), atol=1e-3, rtol=0)
