"""MSA evaluation and inference data: per-structure clicks, user points as click maps, the per-structure sliding
window over full slices, and the BTCV / AMOS datalists."""

import json
import os

import numpy as np
import pytest
import torch
from monai.data import MetaTensor, decollate_batch, list_data_collate
from monai.transforms import Compose, Flipd, Invertd

from common.data.datalists import load_datalist
from common.methods.msa import PerStructureSlidingWindowInferer
from common.methods.msa.slice_clicks import PointsToClickMapd, SliceClicksPerStructured, slice_click_map
from common.transforms.geometry import FilePointsToArrayd


def label_volume() -> MetaTensor:
    """``(1, 8, 6, 5)`` float label (as after nearest resampling): 3 on slices 1-3, 5 on every slice."""
    label = torch.zeros(1, 8, 6, 5)
    label[0, 2:5, 1:4, 1:4] = 3
    label[0, 6:8, 0:2, :] = 5
    return MetaTensor(label, meta={"filename_or_obj": "case.nii.gz"})


# ---------------------------------------------------------------- evaluation clicks, one channel per structure


def test_clicks_per_structure_in_the_given_order():
    label = label_volume()
    clicks = SliceClicksPerStructured(structures=(5, 3, 7))({"label": label})["clicks"]
    assert clicks.shape == (3, 8, 6, 5) and clicks.dtype == torch.float32
    for channel, value, on_slices in ((0, 5, range(5)), (1, 3, (1, 2, 3)), (2, 7, ())):
        for k in range(5):
            pos, neg = torch.nonzero(clicks[channel, :, :, k] > 0), torch.nonzero(clicks[channel, :, :, k] < 0)
            if k in on_slices:  # one positive click inside the structure
                assert len(pos) == 1 and len(neg) == 0 and label[0, pos[0, 0], pos[0, 1], k] == value
            else:  # absent from the slice (7: from the volume): one negative click
                assert len(pos) == 0 and len(neg) == 1
    rng = np.random.RandomState(0)  # one generator per call, used for the structures in order
    expected = torch.cat([slice_click_map(label, v, rng) for v in (5, 3, 7)])
    assert torch.equal(clicks, expected)


def test_clicks_per_structure_are_reproducible_per_case():
    t = SliceClicksPerStructured(structures=(3, 5), seed=4)
    first, second = t({"label": label_volume()})["clicks"], t({"label": label_volume()})["clicks"]
    assert torch.equal(first, second)  # not a stream: every call starts from the seed
    other = SliceClicksPerStructured(structures=(3, 5), seed=5)({"label": label_volume()})["clicks"]
    assert not torch.equal(first, other)


def test_clicks_per_structure_errors():
    with pytest.raises(ValueError, match=r"structures must be a non-empty list.*\[0, 2\]"):
        SliceClicksPerStructured(structures=[0, 2])
    with pytest.raises(ValueError, match=r"structures must be a non-empty"):
        SliceClicksPerStructured(structures=())
    with pytest.raises(ValueError, match=r"SliceClicksPerStructured: 'seg' must be \(1, X, Y, Z\), got \(8, 6, 5\)"):
        SliceClicksPerStructured(label_key="seg")({"seg": torch.zeros(8, 6, 5)})


# ---------------------------------------------------------------- user points -> click map


def test_points_become_signed_clicks_at_rounded_clamped_voxels():
    image = MetaTensor(torch.zeros(1, 6, 5, 4))
    points = torch.tensor([[1.4, 2.6, 0.0], [4.0, 0.2, 3.0], [5.7, 4.9, 3.6], [1.0, 1.0, 0.0]])
    out = PointsToClickMapd()({"image": image, "points": points, "point_labels": [1, 0, 1, 0]})
    clicks = out["clicks"]
    assert clicks.shape == (1, 6, 5, 4) and clicks.dtype == torch.float32
    expected = torch.zeros(1, 6, 5, 4)
    expected[0, 1, 3, 0] = 1.0  # rounded
    expected[0, 4, 0, 3] = -1.0  # label 0: negative
    expected[0, 5, 4, 3] = 1.0  # (6, 5, 4) clamped into the image
    expected[0, 1, 1, 0] = -1.0  # a second click on slice 0
    assert torch.equal(clicks, expected)
    default = PointsToClickMapd()({"image": image, "points": points[:2]})["clicks"]  # no labels: all positive
    assert default[0, 1, 3, 0] == 1 and default[0, 4, 0, 3] == 1 and default.abs().sum() == 2


def test_points_follow_the_orientation_before_the_click_map():
    """File point [1, 2, 3] on an image whose axis 0 was flipped (6 voxels) lands on array voxel [4, 2, 3]."""
    flipped = np.diag([-1.0, 1.0, 1.0, 1.0])
    flipped[0, 3] = 5.0
    image = MetaTensor(
        torch.zeros(1, 6, 5, 4),
        affine=torch.as_tensor(flipped),
        meta={"original_affine": np.eye(4), "spatial_shape": np.array([6, 5, 4])},
    )
    pipeline = Compose([FilePointsToArrayd("points"), PointsToClickMapd()])
    clicks = pipeline({"image": image, "points": [[1, 2, 3]], "point_labels": [1]})["clicks"]
    assert torch.nonzero(clicks).tolist() == [[0, 4, 2, 3]]


def test_points_to_click_map_errors():
    image = MetaTensor(torch.zeros(1, 6, 5, 4), meta={"filename_or_obj": "ct.nii.gz"})
    t = PointsToClickMapd()
    with pytest.raises(ValueError, match=r"'point_labels' for ct.nii.gz: .*or 0 \(negative\), got \[1, 2\]"):
        t({"image": image, "points": [[1, 1, 1], [2, 2, 2]], "point_labels": [1, 2]})
    with pytest.raises(ValueError, match=r"one label per point \(2 points\), .*got \[1\]"):
        t({"image": image, "points": [[1, 1, 1], [2, 2, 2]], "point_labels": [1]})
    with pytest.raises(ValueError, match=r"'points' for ct.nii.gz: expected finite \(N, 3\)"):
        t({"image": image, "points": [[1, 1]]})
    with pytest.raises(ValueError, match=r"point #1 \[1.2, 1.0, 1.0\] \(label 0\) falls on voxel \[1, 1, 1\]"):
        t({"image": image, "points": [[1, 1, 1], [1.2, 1, 1]], "point_labels": [1, 0]})


# ---------------------------------------------------------------- per-structure sliding window over full slices


class ClickEcho(torch.nn.Module):
    """Fake MSA: records (image window, condition) and returns logits ``10 * condition`` ``(B', S, X, Y, Z')``."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, image, condition):
        self.calls.append((image.clone(), condition.clone()))
        return 10.0 * condition


def slice_numbered(b: int, x: int, y: int, z: int) -> MetaTensor:
    """``(B, 1, X, Y, Z)`` image holding ``100 * b + k + 1`` on slice ``k`` of item ``b`` (0 marks padding)."""
    values = 100.0 * torch.arange(b)[:, None] + torch.arange(z) + 1
    return MetaTensor(values[:, None, None, None, :].expand(b, 1, x, y, z).clone())


def random_clicks(b: int, s: int, x: int, y: int, z: int) -> torch.Tensor:
    """``(B, S, X, Y, Z)`` of -1 / 0 / +1, different in every channel."""
    return torch.randint(-1, 2, (b, s, x, y, z), generator=torch.Generator().manual_seed(0)).float()


def test_windows_see_their_own_slices_of_each_structure_clicks():
    images, clicks = slice_numbered(2, 5, 4, 10), random_clicks(2, 3, 5, 4, 10)
    net = ClickEcho()
    out = PerStructureSlidingWindowInferer(num_slices=4, overlap=0.25, sw_batch_size=2)(images, net, clicks)
    assert isinstance(out, MetaTensor) and out.shape == (2, 3, 5, 4, 10)
    torch.testing.assert_close(out.as_tensor(), torch.sigmoid(10.0 * clicks))  # channel order, exact blending
    covered = {}
    for windows, conditions in net.calls:  # one pass: every window carries all three structures' click maps
        for window, condition in zip(windows, conditions):
            assert window.shape == (1, 5, 4, 4) and condition.shape == (3, 5, 4, 4)  # full slices, 4 deep
            b, slices = int(window[0, 0, 0, 0]) // 100, window[0, 0, 0].long() % 100 - 1
            assert torch.equal(condition, clicks[b][..., slices])
            covered.setdefault(b, set()).update(slices.tolist())
    assert covered == {b: set(range(10)) for b in range(2)}


def test_volumes_with_fewer_slices_than_a_window_are_padded():
    images, clicks = slice_numbered(1, 3, 2, 3), random_clicks(1, 2, 3, 2, 3)
    net = ClickEcho()
    out = PerStructureSlidingWindowInferer(num_slices=8)(images, net, clicks)
    assert out.shape == (1, 2, 3, 2, 3)
    torch.testing.assert_close(out.as_tensor(), torch.sigmoid(10.0 * clicks))
    assert len(net.calls) == 1
    ((window, condition),) = net.calls
    assert window[0, 0, 0, 0].tolist() == [0, 0, 1, 2, 3, 0, 0, 0]  # 2 zero slices before, 3 after
    assert torch.equal(condition[..., 2:5], clicks)
    assert condition[..., [0, 1, 5, 6, 7]].abs().sum() == 0


def test_result_keeps_meta_for_invertd():
    spacing = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0]))
    volume = MetaTensor(slice_numbered(1, 6, 5, 4)[0].as_tensor(), affine=spacing)
    pipeline = Compose([Flipd("image", spatial_axis=0)])
    item = pipeline({"image": volume})
    batch = list_data_collate([item])["image"]  # (1, 1, 6, 5, 4) MetaTensor, as a DataLoader gives it
    clicks = random_clicks(1, 2, 6, 5, 4)
    out = PerStructureSlidingWindowInferer(num_slices=2)(batch, ClickEcho(), clicks)
    assert isinstance(out, MetaTensor) and out.is_batch
    pred = decollate_batch(out)[0]
    assert [op["class"] for op in pred.applied_operations] == ["Flip"]
    inverted = Invertd("pred", transform=pipeline, orig_keys="image", nearest_interp=False)(
        {"image": item["image"], "pred": pred}
    )["pred"]
    torch.testing.assert_close(inverted.as_tensor(), torch.sigmoid(10.0 * clicks[0]).flip(1))
    torch.testing.assert_close(inverted.affine, volume.affine)


def test_inferer_errors():
    inferer = PerStructureSlidingWindowInferer(num_slices=2)
    images = slice_numbered(1, 3, 2, 4)
    with pytest.raises(ValueError, match=r"inputs must be \(B, 1, X, Y, Z\), got shape \(1, 2, 3, 2, 4\)"):
        inferer(torch.zeros(1, 2, 3, 2, 4), ClickEcho(), torch.zeros(1, 1, 3, 2, 4))
    with pytest.raises(ValueError, match=r"clicks must be .* = \(1, S >= 1, 3, 2, 4\).*got \(1, 2, 3, 2, 5\)"):
        inferer(images, ClickEcho(), torch.zeros(1, 2, 3, 2, 5))
    with pytest.raises(ValueError, match=r"one logit channel per click map \(1\), got 2 channels"):
        inferer(images, lambda x, condition: torch.cat([x, condition], 1), torch.zeros(1, 1, 3, 2, 4))
    with pytest.raises(ValueError, match=r"num_slices must be >= 1, got 0"):
        PerStructureSlidingWindowInferer(num_slices=0)


# ---------------------------------------------------------------- datalists of BTCV and AMOS


def touch(root, *relative: str) -> None:
    for path in relative:
        os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
        open(os.path.join(root, path), "w").close()


def test_btcv_swin_unetr_split(tmp_path):
    """MONAI Swin-UNETR ``dataset_0.json``: paths relative to the JSON's folder, test images as plain strings."""
    touch(
        tmp_path,
        "imagesTr/img0001.nii.gz",
        "labelsTr/label0001.nii.gz",
        "imagesTr/img0035.nii.gz",
        "labelsTr/label0035.nii.gz",
    )
    split = {
        "labels": {"0": "background", "1": "spleen"},
        "numTraining": 2,
        "training": [{"image": "imagesTr/img0001.nii.gz", "label": "labelsTr/label0001.nii.gz"}],
        "validation": [{"image": "imagesTr/img0035.nii.gz", "label": "labelsTr/label0035.nii.gz"}],
        "test": ["imagesTs/img0061.nii.gz"],
    }
    (tmp_path / "dataset_0.json").write_text(json.dumps(split))
    train = load_datalist(str(tmp_path / "dataset_0.json"))
    val = load_datalist(str(tmp_path / "dataset_0.json"), key="validation")
    assert train == [
        {"image": str(tmp_path / "imagesTr/img0001.nii.gz"), "label": str(tmp_path / "labelsTr/label0001.nii.gz")}
    ]
    assert val == [
        {"image": str(tmp_path / "imagesTr/img0035.nii.gz"), "label": str(tmp_path / "labelsTr/label0035.nii.gz")}
    ]
    elsewhere = tmp_path / "splits"
    elsewhere.mkdir()
    (elsewhere / "dataset_0.json").write_text(json.dumps(split))  # JSON outside the data folder: give base_dir
    assert load_datalist(str(elsewhere / "dataset_0.json"), base_dir=str(tmp_path)) == train
    assert all(os.path.isfile(p) for item in train + val for p in item.values())


def test_amos_dataset_json(tmp_path):
    """AMOS ``dataset.json``: ``./``-prefixed paths, validation cases under imagesVa/labelsVa."""
    touch(
        tmp_path,
        "imagesTr/amos_0001.nii.gz",
        "labelsTr/amos_0001.nii.gz",
        "imagesVa/amos_0008.nii.gz",
        "labelsVa/amos_0008.nii.gz",
    )
    split = {
        "training": [{"image": "./imagesTr/amos_0001.nii.gz", "label": "./labelsTr/amos_0001.nii.gz"}],
        "validation": [{"image": "./imagesVa/amos_0008.nii.gz", "label": "./labelsVa/amos_0008.nii.gz"}],
        "test": [{"image": "./imagesTs/amos_0002.nii.gz"}],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(split))
    train = load_datalist(str(tmp_path / "dataset.json"))
    val = load_datalist(str(tmp_path / "dataset.json"), key="validation")
    assert train == [
        {"image": str(tmp_path / "imagesTr/amos_0001.nii.gz"), "label": str(tmp_path / "labelsTr/amos_0001.nii.gz")}
    ]
    assert val == [
        {"image": str(tmp_path / "imagesVa/amos_0008.nii.gz"), "label": str(tmp_path / "labelsVa/amos_0008.nii.gz")}
    ]
    assert all(os.path.isfile(p) for item in train + val for p in item.values())
    with pytest.raises(ValueError, match=r"has no 'fold0' list"):
        load_datalist(str(tmp_path / "dataset.json"), key="fold0")
