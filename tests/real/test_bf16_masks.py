"""MedSAM's bf16 encoder path on real data: every organ of both shared CT volumes, all boxes in one
``inference.json`` call, segmented with ``precision`` float32 and bf16, per-organ Dice between the two masks.

Issue 15 asks >= 0.99 before bf16 may be the default; it is not met (measured: spleen, kidneys, liver, stomach
0.987-0.999; the pancreas 0.66 and 0.53, a small structure the model segments poorly in float32 too, Dice 0.23-0.34
to its label, whose propagation takes another path after a tiny change), so ``precision`` defaults to float32 and
bf16 is opt-in. This test keeps the measured agreement from getting worse: >= 0.98 for every organ but the pancreas,
which must still be found. The DICOM series' labels are placed on its grid through physical space."""

from __future__ import annotations

import numpy as np
import pytest
from workflow_utils import box_of, ct_labels_on_image, dice, inference_mask

pytestmark = pytest.mark.slow  # four MedSAM runs over 50 real slices

ORGANS = (1, 2, 3, 5, 6, 7)  # spleen, kidneys, liver, stomach, pancreas
DICE_MIN = 0.98
UNSTABLE = {7}  # the pancreas: Dice 0.23-0.34 to its label in float32; bf16 sends its propagation another way


@pytest.mark.parametrize("volume", ["3mm", "dicom"])
def test_bf16_masks_match_float32_per_organ(repo_root, totalseg_dir, litemedsam_weights, volume, tmp_path):
    labels = ct_labels_on_image(totalseg_dir, volume)
    present = [o for o in ORGANS if (labels == o).any()]
    image = totalseg_dir / ("ct_abdomen_3mm.nii.gz" if volume == "3mm" else "dicom")
    request = {"image": str(image), "boxes": [box_of(labels == o) for o in present], "box_labels": present}
    configs = repo_root / "bundles" / "medsam" / "configs"
    masks = {}
    for precision in ("float32", "bf16"):
        masks[precision] = inference_mask(
            configs, tmp_path / precision, request, ckpt_path=str(litemedsam_weights), precision=precision
        )
    assert not np.array_equal(masks["float32"], masks["bf16"])  # the bf16 path did run
    agreement = {o: round(dice(masks["bf16"] == o, masks["float32"] == o), 4) for o in present}
    print(f"{volume}: Dice bf16 vs float32 per organ {agreement}")
    for organ in present:
        assert (masks["bf16"] == organ).any() and dice(masks["float32"] == organ, labels == organ) > 0.2
        if organ not in UNSTABLE:
            assert agreement[organ] >= DICE_MIN, (volume, organ, agreement)
