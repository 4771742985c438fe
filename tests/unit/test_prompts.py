"""common.transforms.label_prompts: tight boxes, outward jitter, box and point sampling (2D and 3D), seeds, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from common.transforms.label_prompts import RandBoxPromptd, RandPointPromptd, bounding_box, jitter_box


def _label_2d() -> MetaTensor:
    lab = torch.zeros(1, 40, 30)
    lab[0, 5:12, 7:20] = 2  # x 5..11, y 7..19
    lab[0, 30:38, 0:3] = 7  # touches the y=0 border
    return MetaTensor(lab, meta={"filename_or_obj": "/data/case_2d.nii.gz"})


def _label_3d() -> MetaTensor:
    lab = torch.zeros(1, 32, 24, 16)
    lab[0, 4:9, 10:20, 2:5] = 1
    lab[0, 20:31, 1:6, 8:16] = 3  # touches the z=15 border
    lab[0, 25, 20, 0] = 3  # a stray voxel of the same label widens its box
    return MetaTensor(lab, meta={"filename_or_obj": "/data/case_3d.nii.gz"})


# ---------------------------------------------------------------- bounding_box


def test_bounding_box_convention_2d_3d():
    m = np.zeros((10, 8), bool)
    m[2:5, 3:7] = True  # axis 0 (x) 2..4, axis 1 (y) 3..6
    assert bounding_box(m) == [2, 3, 4, 6]
    m3 = torch.zeros(10, 8, 6)
    m3[1, 2, 3] = 1
    m3[7, 5, 4] = 2
    assert bounding_box(m3) == [1, 2, 3, 7, 5, 4]
    assert bounding_box(MetaTensor(m3)) == [1, 2, 3, 7, 5, 4]
    assert all(isinstance(v, int) for v in bounding_box(m3))


def test_bounding_box_errors():
    with pytest.raises(ValueError, match="empty"):
        bounding_box(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="2D"):
        bounding_box(np.ones((1, 2, 3, 4)))


# ---------------------------------------------------------------- jitter_box


def test_jitter_only_outward_within_max_shift_inclusive():
    box, shape = [10, 12, 20, 25], (40, 50)
    seen = set()
    rng = np.random.RandomState(0)
    for _ in range(400):
        j = jitter_box(box, 3, shape, rng)
        lo_shift = [box[0] - j[0], box[1] - j[1]]
        hi_shift = [j[2] - box[2], j[3] - box[3]]
        assert all(0 <= s <= 3 for s in lo_shift + hi_shift)
        seen.update(lo_shift + hi_shift)
    assert seen == {0, 1, 2, 3}  # inclusive of max_shift, like MedSAM's random.randint(0, bbox_shift)


def test_jitter_clamps_and_per_axis_3d():
    shape = (20, 20, 10)
    box = [0, 1, 3, 19, 18, 9]
    rng = np.random.default_rng(1)  # numpy Generator is accepted too
    for _ in range(100):
        j = jitter_box(box, (4, 4, 0), shape, rng)
        assert j[0] == 0 and j[3] == 19  # clamped to [0, size - 1]
        assert 0 <= j[1] <= 1 and 18 <= j[4] <= 19
        assert j[2] == 3 and j[5] == 9  # z not jittered
    assert jitter_box(box, 0, shape, rng) == box


def test_jitter_errors():
    with pytest.raises(ValueError):
        jitter_box([5, 5, 4, 8], 2, (10, 10))  # x0 > x1
    with pytest.raises(ValueError):
        jitter_box([0, 0, 10, 5], 2, (10, 10))  # outside
    with pytest.raises(ValueError):
        jitter_box([0, 0, 1, 1], (1, 2, 3), (10, 10))
    with pytest.raises(ValueError):
        jitter_box([0, 0, 1, 1], -1, (10, 10))


# ---------------------------------------------------------------- RandBoxPromptd


def _check_box(out, label, max_shift):
    value = out["box_label"]
    mask = label[0] == value
    tight = bounding_box(mask)
    box = out["box"]
    nd = mask.ndim
    assert box.dtype == torch.float32 and box.shape == (2 * nd,)
    b = [int(v) for v in box.tolist()]
    for a in range(nd):
        assert 0 <= tight[a] - b[a] <= max_shift and 0 <= b[nd + a] - tight[nd + a] <= max_shift
        assert 0 <= b[a] and b[nd + a] <= mask.shape[a] - 1
    target = out["target"]
    assert isinstance(target, MetaTensor) and target.dtype == torch.float32 and target.shape == label.shape
    assert target.meta["filename_or_obj"] == label.meta["filename_or_obj"]
    assert torch.equal(target.as_tensor()[0], mask.float().as_tensor())


@pytest.mark.parametrize("make_label", [_label_2d, _label_3d])
def test_rand_box_prompt_tight_jittered_target(make_label):
    label = make_label()
    t = RandBoxPromptd(max_shift=4)
    t.set_random_state(0)
    values = set()
    for _ in range(40):
        out = t({"label": label})
        _check_box(out, label, 4)
        values.add(out["box_label"])
    assert values == {int(v) for v in torch.unique(label).tolist() if v}  # every structure gets chosen


def test_rand_box_prompt_zero_shift_is_tight_box():
    label = _label_3d()
    out = RandBoxPromptd(max_shift=0, labels=[3]).set_random_state(5)({"label": label})
    assert out["box"].tolist() == [20.0, 1.0, 0.0, 30.0, 20.0, 15.0]  # includes the stray voxel at (25, 20, 0)
    assert out["box_label"] == 3


def test_rand_box_prompt_labels_restriction_and_keys():
    label = _label_2d()
    t = RandBoxPromptd(label_key="seg", box_key="bb", target_key="gt", label_value_key="which", labels=[7, 9])
    for seed in range(10):
        out = t.set_random_state(seed)({"seg": label})
        assert out["which"] == 7 and set(out) == {"seg", "bb", "gt", "which"}
    out = RandBoxPromptd(target_key=None, label_value_key=None)({"label": label})
    assert set(out) == {"label", "box"}


def test_rand_box_prompt_seed_reproducible_and_varies():
    label = _label_2d()
    a = RandBoxPromptd(max_shift=5).set_random_state(123)
    b = RandBoxPromptd(max_shift=5).set_random_state(123)
    for _ in range(5):
        oa, ob = a({"label": label}), b({"label": label})
        assert torch.equal(oa["box"], ob["box"]) and oa["box_label"] == ob["box_label"]
    boxes = {
        tuple(RandBoxPromptd(max_shift=5).set_random_state(s)({"label": label})["box"].tolist()) for s in range(20)
    }
    assert len(boxes) > 1
    # inside a Compose, which propagates the seed
    pipe = Compose([RandBoxPromptd(max_shift=5)])
    first = pipe.set_random_state(9)({"label": label})["box"]
    assert torch.equal(first, pipe.set_random_state(9)({"label": label})["box"])


def test_rand_box_prompt_numpy_label():
    label = _label_2d().numpy()
    out = RandBoxPromptd(labels=[2], max_shift=0)({"label": label})
    assert out["box"].tolist() == [5.0, 7.0, 11.0, 19.0]
    assert isinstance(out["target"], np.ndarray) and out["target"].dtype == np.float32


def test_rand_box_prompt_errors_name_key_and_file():
    empty = MetaTensor(torch.zeros(1, 8, 8), meta={"filename_or_obj": "/data/no_organs.nii.gz"})
    with pytest.raises(ValueError, match=r"'label'.*no_organs\.nii\.gz.*no foreground"):
        RandBoxPromptd()({"label": empty})
    with pytest.raises(ValueError, match=r"'mask'.*no foreground"):
        RandBoxPromptd(label_key="mask")({"mask": np.zeros((1, 5, 5))})
    with pytest.raises(ValueError, match=r"case_2d\.nii\.gz.*none of the requested labels"):
        RandBoxPromptd(labels=[4])({"label": _label_2d()})
    with pytest.raises(ValueError, match="channel-first"):
        RandBoxPromptd()({"label": torch.ones(2, 4, 4)})
    with pytest.raises(ValueError):
        RandBoxPromptd(labels=[0, 1])
    with pytest.raises(KeyError):
        RandBoxPromptd()({"image": torch.ones(1, 4, 4)})
    assert RandBoxPromptd(allow_missing_keys=True)({"image": 1}) == {"image": 1}


# ---------------------------------------------------------------- RandPointPromptd


@pytest.mark.parametrize("make_label", [_label_2d, _label_3d])
def test_rand_point_prompt_inside_outside(make_label):
    label = make_label()
    t = RandPointPromptd(num_positive=3, num_negative=4)
    t.set_random_state(0)
    nd = label.ndim - 1
    for _ in range(20):
        out = t({"label": label})
        pts, pl = out["points"], out["point_labels"]
        assert pts.shape == (7, nd) and pts.dtype == torch.float32
        assert pl.tolist() == [1, 1, 1, 0, 0, 0, 0] and pl.dtype == torch.int64
        mask = label[0] == out["point_label_value"]
        idx = pts.long()
        inside = mask[tuple(idx[:, a] for a in range(nd))]
        assert inside[:3].all() and not inside[3:].any()
        assert len({tuple(p) for p in idx[:3].tolist()}) == 3 and len({tuple(p) for p in idx[3:].tolist()}) == 4
        assert torch.equal(out["target"].as_tensor()[0], mask.float().as_tensor())


def test_rand_point_prompt_covers_structure_and_reproducible():
    lab = torch.zeros(1, 6, 6)
    lab[0, 1:3, 2:4] = 1  # 4 voxels
    seen = set()
    for seed in range(60):
        out = RandPointPromptd(num_positive=1).set_random_state(seed)({"label": lab})
        seen.add(tuple(int(v) for v in out["points"][0]))
    assert seen == {(1, 2), (1, 3), (2, 2), (2, 3)}
    a = RandPointPromptd(num_positive=2, num_negative=2).set_random_state(4)({"label": _label_3d()})
    b = RandPointPromptd(num_positive=2, num_negative=2).set_random_state(4)({"label": _label_3d()})
    assert torch.equal(a["points"], b["points"])


def test_rand_point_prompt_small_regions():
    lab = torch.ones(1, 4, 4)
    lab[0, 0, 0] = 0  # one background voxel: the negative sampler enumerates it
    out = RandPointPromptd(num_positive=2, num_negative=1, labels=[1]).set_random_state(0)({"label": lab})
    assert out["points"][2].tolist() == [0.0, 0.0]
    tiny = torch.zeros(1, 5, 5)
    tiny[0, 2, 3] = 4
    out = RandPointPromptd(num_positive=3)({"label": tiny})  # fewer voxels than points: repeats
    assert out["points"].tolist() == [[2.0, 3.0]] * 3


def test_rand_point_prompt_errors():
    full = MetaTensor(torch.ones(1, 4, 4), meta={"filename_or_obj": "/data/full.nii.gz"})
    with pytest.raises(ValueError, match=r"'label'.*full\.nii\.gz.*negative"):
        RandPointPromptd(num_negative=1)({"label": full})
    with pytest.raises(ValueError, match=r"'label'.*no foreground"):
        RandPointPromptd()({"label": torch.zeros(1, 3, 3, 3)})
    with pytest.raises(ValueError):
        RandPointPromptd(num_positive=0, num_negative=0)
