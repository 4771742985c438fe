"""3DSAM-adapter at its published size on real CT: one 128^3 patch at 1 mm around the pancreas of the 3 mm volume,
prepared as the bundle's evaluation prepares it, through the point-centred patch inferer (random weights: this
checks shapes, geometry and the fused input path on real intensities, not accuracy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import (
    AsDiscreted,
    Compose,
    CopyItemsd,
    EnsureChannelFirstd,
    LabelFilterd,
    LoadImaged,
    NormalizeIntensityd,
    ScaleIntensityRanged,
)

from common.methods.sam3d_adapter import PointPatchInferer
from common.methods.sam3d_adapter.point_patch import crop_patch, patch_start
from common.methods.sam3d_adapter.points import RandVolumePointsd
from common.methods.sam3d_adapter.resample import ScaleResampled
from common.networks.sam3d_adapter import build_sam3d_adapter

PANCREAS = 7


@pytest.fixture(scope="module")
def prepared(totalseg_dir):
    """The bundle's evaluation preprocessing (evaluate.json) with the pancreas as target, 10 seeded points."""
    points = RandVolumePointsd(label_key="prompt_label", num_positive=10, num_random=0, require_foreground=True)
    points.set_random_state(seed=0)
    chain = Compose(
        [
            LoadImaged(["image", "label"], reader="NibabelReader", image_only=True, dtype=torch.float32),
            EnsureChannelFirstd(["image", "label"]),
            LabelFilterd("label", [PANCREAS]),
            AsDiscreted("label", threshold=0.5),
            CopyItemsd("label", names="prompt_label"),
            ScaleResampled(["image", "prompt_label"], mode=["trilinear", "nearest"]),
            points,
            ScaleIntensityRanged("image", -39.0, 204.0, -39.0, 204.0, clip=True),
            NormalizeIntensityd("image", subtrahend=68.45214, divisor=63.422806),
        ]
    )
    return chain(
        {
            "image": str(totalseg_dir / "ct_abdomen_3mm.nii.gz"),
            "label": str(totalseg_dir / "ct_abdomen_3mm_labels.nii.gz"),
        }
    )


@pytest.mark.slow
def test_full_size_forward_on_the_pancreas(prepared):
    image, points, prompt = prepared["image"], prepared["points"], prepared["prompt_label"]
    assert tuple(image.shape[1:]) == (366, 303, 90)  # 3 mm -> 1 mm: floor(n * 3)
    assert all(prompt[0, int(x), int(y), int(z)] == 1 for x, y, z in points.tolist())  # points on the pancreas

    torch.manual_seed(0)
    model = build_sam3d_adapter().eval()
    start = patch_start(points, 128)
    patch = crop_patch(image.as_tensor(), start, 128)[None]
    # the patch holds most of the pancreas, whose extent at 1 mm is about 117 x 63 x 54 voxels
    inside = crop_patch(prompt.as_tensor(), start, 128).sum() / prompt.sum()
    assert inside > 0.8

    with torch.no_grad():
        # the fused input path equals the published upsample-then-conv path on this real patch
        enc = model.image_encoder
        patch_dhw = patch.permute(0, 1, 4, 3, 2)
        assert (enc.embed_fused(patch_dhw) - enc.embed_literal(patch_dhw)).abs().max() <= 1e-4
        prob = PointPatchInferer(roi_size=128)(image[None], model, points=points[None])

    assert prob.shape == (1, 1, 366, 303, 90) and torch.isfinite(prob).all()
    assert float(prob.min()) >= 0.0 and float(prob.max()) <= 1.0
    lo, hi = start.clamp(min=0), (start + 128).clamp(max=torch.tensor([366, 303, 90]))
    cube = torch.zeros_like(prob, dtype=torch.bool)
    cube[..., lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
    assert float(prob[~cube].abs().max()) == 0.0  # nothing outside the patch around the points
    assert float(prob[cube].std()) > 0  # and a non-constant map inside it
    np.testing.assert_allclose(prob.affine.numpy(), image.affine.numpy())  # on the 1 mm grid, for Invertd
