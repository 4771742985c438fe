"""MSA click prompts: one structure per crop, one click per slice (positive on it, negative where it is absent)."""

import numpy as np
import pytest
import torch

from common.methods.msa.slice_clicks import RandSliceClicksd


def crop() -> torch.Tensor:
    label = torch.zeros(1, 8, 6, 5, dtype=torch.long)
    label[0, 2:5, 1:4, 1:4] = 3  # structure 3 on slices 1-3
    label[0, 6:8, 0:2, :] = 5  # structure 5 on every slice
    return label


def test_one_click_per_slice_on_the_chosen_structure():
    t = RandSliceClicksd(labels=[3])
    t.set_random_state(seed=0)
    out = t({"label": crop()})
    clicks, target = out["clicks"][0], out["target"][0]
    assert out["structure"] == 3 and torch.equal(target, (crop()[0] == 3).float())
    for k in range(5):
        pos, neg = torch.nonzero(clicks[:, :, k] > 0), torch.nonzero(clicks[:, :, k] < 0)
        if k in (1, 2, 3):  # the structure is on the slice: one positive click inside it
            assert len(pos) == 1 and len(neg) == 0 and target[pos[0, 0], pos[0, 1], k] == 1
        else:  # not on the slice: one negative click
            assert len(pos) == 0 and len(neg) == 1


def test_structure_choice_and_reproducibility():
    seen = set()
    t = RandSliceClicksd()
    t.set_random_state(seed=1)
    for _ in range(20):
        seen.add(t({"label": crop()})["structure"])
    assert seen == {3, 5}
    a, b = RandSliceClicksd(), RandSliceClicksd()
    a.set_random_state(seed=7)
    b.set_random_state(seed=7)
    assert torch.equal(a({"label": crop()})["clicks"], b({"label": crop()})["clicks"])


def test_crop_without_structures():
    empty = {"label": torch.zeros(1, 4, 4, 3, dtype=torch.long)}
    out = RandSliceClicksd(labels=[1, 2])(empty)
    assert out["target"].sum() == 0 and (out["clicks"] < 0).sum() == 3 and (out["clicks"] > 0).sum() == 0
    with pytest.raises(ValueError, match="no structure"):
        RandSliceClicksd()(empty)
    with pytest.raises(ValueError, match=">= 1"):
        RandSliceClicksd(labels=[0])
    np.testing.assert_equal(RandSliceClicksd(labels=[2])({"label": crop()})["structure"], 2)
