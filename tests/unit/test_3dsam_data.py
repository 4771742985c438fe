"""3DSAM-adapter data pieces: scale resampling, volume point prompts, the point-centred patch inferer, the datalist."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor, decollate_batch, list_data_collate, load_decathlon_datalist
from monai.transforms import Compose, Invertd

from common.methods.sam3d_adapter import PointPatchInferer, resample
from common.methods.sam3d_adapter.points import RandVolumePointsd
from common.methods.sam3d_adapter.resample import ScaleResampled

REPO_ROOT = Path(__file__).resolve().parents[2]
SPLITS = REPO_ROOT.parent / "shared" / "specs" / "3dsam_splits_fold0.json"
DATALIST = REPO_ROOT / "bundles" / "3dsam_pancreas" / "configs" / "datalist_fold0.json"


def _volume(shape, spacing, values=None, name="case.nii.gz", rotate=False):
    """MetaTensor (1, *shape) with voxel sizes ``spacing`` (mm) and an offset (and optionally rotated) affine."""
    affine = np.diag([*spacing, 1.0])
    if rotate:
        c, s = np.cos(0.3), np.sin(0.3)
        affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ affine[:3, :3]
    affine[:3, 3] = [-12.5, 30.0, 7.25]
    data = torch.rand((1, *shape), generator=torch.Generator().manual_seed(0)) if values is None else values
    return MetaTensor(data, affine=torch.as_tensor(affine), meta={"filename_or_obj": name})


def _world(affine, index):
    return (np.asarray(affine, dtype=np.float64) @ np.append(index, 1.0))[:3]


# ---------------------------------------------------------------- ScaleResampled


def test_resample_shape_and_values_equal_interpolate():
    image = _volume((5, 6, 7), (3.0, 3.0, 3.0))
    out = ScaleResampled("image")({"image": image})["image"]
    assert out.shape == (1, 15, 18, 21)
    expected = F.interpolate(
        image.as_tensor()[None],
        scale_factor=(3.0, 3.0, 3.0),
        mode="trilinear",
        align_corners=False,
        recompute_scale_factor=False,
    )[0]
    torch.testing.assert_close(out.as_tensor(), expected, rtol=0, atol=0)
    odd = _volume((5, 6, 7), (1.5, 2.2, 0.9))
    out = ScaleResampled("image")({"image": odd})["image"]
    assert out.shape == (1, 7, 13, 6)  # floor(n * spacing), not rounded
    expected = F.interpolate(
        odd.as_tensor()[None],
        scale_factor=(1.5, 2.2, 0.9),
        mode="trilinear",
        align_corners=False,
        recompute_scale_factor=False,
    )[0]
    torch.testing.assert_close(out.as_tensor(), expected)


def test_resample_affine_overlays_input_in_world_space():
    image = _volume((5, 6, 7), (3.0, 2.0, 1.5), rotate=True)
    out = ScaleResampled("image", target_spacing=(1.0, 1.0, 0.5))({"image": image})["image"]
    scale = np.array([3.0, 2.0, 3.0])
    np.testing.assert_allclose(np.linalg.norm(out.affine.numpy()[:3, :3], axis=0), [1.0, 1.0, 0.5], atol=1e-9)
    for o in ([0, 0, 0], [4, 7, 11], [14, 11, 20]):
        old = (np.asarray(o) + 0.5) / scale - 0.5
        np.testing.assert_allclose(_world(out.affine, o), _world(image.affine, old), atol=1e-4)
    # a field linear in world space is reproduced exactly where trilinear sampling does not clamp at the border
    idx = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in (5, 6, 7)], indexing="ij"))
    world_x = torch.einsum("i,ixyz->xyz", torch.as_tensor(image.affine[0, :3]), idx) + float(image.affine[0, 3])
    field = _volume((5, 6, 7), (3.0, 2.0, 1.5), values=world_x[None].float(), rotate=True)
    resampled = ScaleResampled("image", target_spacing=(1.0, 1.0, 0.5))({"image": field})["image"]
    for o in ([3, 4, 5], [10, 6, 12], [7, 9, 17]):
        assert abs(float(resampled[0, o[0], o[1], o[2]]) - _world(resampled.affine, o)[0]) < 1e-4


def test_resample_anisotropic_in_plane_first(monkeypatch):
    image = _volume((10, 9, 4), (0.7, 0.7, 6.0))
    calls = []
    original = F.interpolate

    def spy(x, *args, **kwargs):
        calls.append((x.ndim, kwargs["mode"], tuple(kwargs["scale_factor"])))
        return original(x, *args, **kwargs)

    monkeypatch.setattr(resample.F, "interpolate", spy)
    out = ScaleResampled("image")({"image": image})["image"]
    monkeypatch.undo()
    assert calls == [(4, "bilinear", (0.7, 0.7)), (5, "trilinear", (1.0, 1.0, 6.0))]
    assert out.shape == (1, 7, 6, 24)
    planar = F.interpolate(
        image.as_tensor().permute(3, 0, 1, 2),
        scale_factor=(0.7, 0.7),
        mode="bilinear",
        align_corners=False,
        recompute_scale_factor=False,
    ).permute(1, 2, 3, 0)
    expected = F.interpolate(
        planar[None], scale_factor=(1.0, 1.0, 6.0), mode="trilinear", align_corners=False, recompute_scale_factor=False
    )[0]
    torch.testing.assert_close(out.as_tensor(), expected, rtol=0, atol=0)
    calls.clear()
    monkeypatch.setattr(resample.F, "interpolate", spy)
    ScaleResampled("image", anisotropy_ratio=10.0)({"image": image})
    assert len(calls) == 1 and calls[0][0] == 5  # ratio 6 / 0.7 < 10: one trilinear pass


def test_resample_nearest_keeps_integer_labels():
    values = torch.randint(0, 3, (1, 5, 6, 7), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    label = _volume((5, 6, 7), (3.0, 1.5, 2.0), values=values)
    image = _volume((5, 6, 7), (3.0, 1.5, 2.0))
    out = ScaleResampled(["image", "label"], mode=["trilinear", "nearest"])({"image": image, "label": label})
    assert out["label"].dtype == torch.uint8 and set(out["label"].unique().tolist()) <= {0, 1, 2}
    expected = F.interpolate(
        values[None].float(), scale_factor=(3.0, 1.5, 2.0), mode="nearest", recompute_scale_factor=False
    )[0].to(torch.uint8)
    assert torch.equal(out["label"].as_tensor(), expected)
    torch.testing.assert_close(out["label"].affine, out["image"].affine)


def test_resample_invertd_round_trip():
    image = _volume((5, 6, 7), (3.0, 2.0, 1.5), rotate=True)
    pipeline = Compose([ScaleResampled("image")])
    data = pipeline({"image": image})
    resampled = data["image"]
    pred = MetaTensor(resampled.as_tensor().repeat(2, 1, 1, 1))
    # Invertd defaults to nearest_interp=True; upstream resizes its probabilities trilinearly
    inverted = Invertd("pred", transform=pipeline, orig_keys="image", nearest_interp=False)(
        {"image": resampled, "pred": pred}
    )["pred"]
    assert inverted.shape == (2, 5, 6, 7)
    torch.testing.assert_close(inverted.affine, image.affine)
    expected = F.interpolate(resampled.as_tensor()[None], size=(5, 6, 7), mode="trilinear", align_corners=False)[0]
    torch.testing.assert_close(inverted.as_tensor()[1:], expected)
    assert not inverted.applied_operations
    nearest = Invertd("pred", transform=pipeline, orig_keys="image")(
        {"image": resampled, "pred": MetaTensor((resampled > 0.5).float())}
    )["pred"]
    assert set(nearest.unique().tolist()) <= {0.0, 1.0} and nearest.shape == (1, 5, 6, 7)


def test_resample_errors_name_the_key():
    with pytest.raises(ValueError, match="'image'.*MetaTensor"):
        ScaleResampled("image")({"image": torch.zeros(1, 4, 4, 4)})
    with pytest.raises(ValueError, match="mode must be one of"):
        ScaleResampled("image", mode="bilinear")
    with pytest.raises(ValueError, match="empty output"):
        ScaleResampled("image", target_spacing=(10.0, 1.0, 1.0))({"image": _volume((3, 4, 4), (1.0, 1.0, 1.0))})


# ---------------------------------------------------------------- RandVolumePointsd


def _label(shape=(6, 7, 8), voxels=(), name="pancreas_001.nii.gz"):
    values = torch.zeros((1, *shape))
    for v in voxels:
        values[(0, *v)] = 1
    return MetaTensor(values, meta={"filename_or_obj": name})


def test_points_follow_array_axes_and_replacement():
    sampler = RandVolumePointsd(num_positive=5, num_random=0, require_foreground=True)
    points = sampler({"label": _label(voxels=[(2, 3, 4)])})["points"]
    assert points.dtype == torch.float32 and points.shape == (5, 3)
    assert points.tolist() == [[2.0, 3.0, 4.0]] * 5  # one foreground voxel, drawn 5 times: with replacement


def test_points_positive_then_random_from_whole_volume():
    values = torch.zeros((1, 10, 10, 10))
    values[:, :5] = 1  # half the volume is foreground
    sampler = RandVolumePointsd(num_positive=10, num_random=200)
    sampler.set_random_state(seed=0)
    points = sampler({"label": MetaTensor(values)})["points"].long()
    assert points.shape == (210, 3) and points.min() >= 0 and points.max() <= 9
    on_foreground = values[0][points[:, 0], points[:, 1], points[:, 2]] > 0
    assert on_foreground[:10].all()
    assert 0 < int(on_foreground[10:].sum()) < 200  # random points land on both sides (upstream issue #15)


def test_points_empty_label():
    empty = {"label": _label()}
    assert RandVolumePointsd(num_positive=10, num_random=20)(empty)["points"].shape == (20, 3)
    validation = RandVolumePointsd(num_positive=10, num_random=0, num_random_if_empty=10)
    assert validation(empty)["points"].shape == (10, 3)
    assert validation({"label": _label(voxels=[(1, 1, 1)])})["points"].shape == (10, 3)
    with pytest.raises(ValueError, match=r"pancreas_001\.nii\.gz.*no foreground"):
        RandVolumePointsd(num_positive=1, num_random=0, require_foreground=True)(empty)


def test_points_reproducible_under_seed():
    data = {"label": _label(voxels=[(1, 2, 3), (4, 5, 6), (5, 6, 7), (0, 0, 0)])}
    sampler = RandVolumePointsd()
    first = sampler.set_random_state(seed=7)(data)["points"]
    again = sampler.set_random_state(seed=7)(data)["points"]
    other = sampler.set_random_state(seed=8)(data)["points"]
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_points_errors():
    with pytest.raises(ValueError, match=r"'label'.*\(1, X, Y, Z\).*\(2, 6, 7, 8\)"):
        RandVolumePointsd()({"label": torch.zeros(2, 6, 7, 8)})
    with pytest.raises(ValueError, match="num_random_if_empty"):
        RandVolumePointsd(num_positive=3, num_random=0)


# ---------------------------------------------------------------- PointPatchInferer


class RecordingNet(torch.nn.Module):
    """Foreground logit = the first image channel (so probability = sigmoid(image)); records its inputs."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, patch, points):
        self.calls.append((patch.clone(), points.clone()))
        return torch.cat([torch.zeros_like(patch[:, :1]), patch[:, :1]], dim=1)


class BumpNet(torch.nn.Module):
    """Foreground logit peaks (Gaussian bump) at the given points, in patch coordinates."""

    def forward(self, patch, points):
        grid = torch.stack(
            torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in patch.shape[2:]], indexing="ij"), dim=-1
        )
        dist = ((grid[None, None] - points[:, :, None, None, None]) ** 2).sum(-1).min(dim=1).values
        fg = 10 * torch.exp(-dist / 2) - 5
        return torch.stack([torch.zeros_like(fg), fg], dim=1)


def _image(shape=(20, 18, 16)):
    return torch.arange(1, 1 + np.prod(shape), dtype=torch.float32).reshape(1, 1, *shape) / 1000


def test_patch_centring_padding_and_shifted_points():
    image, net = _image(), RecordingNet()
    points = torch.tensor([[[1.0, 1.0, 1.0], [3.0, 5.0, 2.0]]])
    out = PointPatchInferer(roi_size=8)(image, net, points)
    patch, shifted = net.calls[0]
    # centre (max + min) // 2 = (2, 3, 1) -> first voxel (-2, -1, -3)
    assert patch.shape == (1, 1, 8, 8, 8)
    assert torch.equal(shifted, torch.tensor([[[3.0, 2.0, 4.0], [5.0, 6.0, 5.0]]]))
    assert torch.equal(patch[0, 0, 2:, 1:, 3:], image[0, 0, :6, :7, :5])
    assert patch[0, 0, :2].abs().sum() == 0 and patch[0, 0, :, :1].abs().sum() == 0
    assert patch[0, 0, :, :, :3].abs().sum() == 0
    expected = torch.zeros_like(image)
    expected[0, 0, :6, :7, :5] = torch.sigmoid(image[0, 0, :6, :7, :5])
    assert out.shape == (1, 1, 20, 18, 16)
    torch.testing.assert_close(out, expected)


def test_patch_pasted_back_where_points_are():
    image = torch.zeros(2, 1, 20, 18, 16)
    points = torch.tensor([[[10.0, 9.0, 8.0]], [[18.0, 2.0, 15.0]]])
    out = PointPatchInferer(roi_size=8)(image, BumpNet(), points)
    assert out.shape == (2, 1, 20, 18, 16)
    for b in range(2):
        peak = np.unravel_index(int(out[b, 0].argmax()), out.shape[2:])
        assert list(peak) == points[b, 0].long().tolist()
    # the patch of item 1 starts at (14, -2, 11): nothing is written outside [14, 20) x [0, 6) x [11, 16)
    assert out[1, 0, :14].sum() == 0 and out[1, 0, :, 6:].sum() == 0 and out[1, 0, :, :, :11].sum() == 0
    assert out[1, 0, 14:, :6, 11:].min() > 0


def test_point_counts_use_leading_points():
    image, net = _image(), RecordingNet()
    points = torch.tensor([[[10.0, 9.0, 8.0], [2.0, 3.0, 4.0], [12.0, 15.0, 6.0]]])
    out = PointPatchInferer(roi_size=8, point_counts=(1, 3))(image, net, points)
    assert out.shape == (1, 2, 20, 18, 16)
    (patch1, pts1), (patch3, pts3) = net.calls
    assert torch.equal(pts1, torch.tensor([[[4.0, 4.0, 4.0]]]))  # centre = the point, start (6, 5, 4)
    assert torch.equal(patch1[0, 0], image[0, 0, 6:14, 5:13, 4:12])
    # k = 3: centre ((12 + 2) // 2, (15 + 3) // 2, (8 + 4) // 2) = (7, 9, 6), start (3, 5, 2)
    assert torch.equal(pts3, points - torch.tensor([3.0, 5.0, 2.0]))
    assert out[0, 0, 6:14, 5:13, 4:12].min() > 0 and out[0, 0, :6].sum() == 0
    assert out[0, 1, 3:11, 5:13, 2:10].min() > 0 and out[0, 1, 11:].sum() == 0
    with pytest.raises(ValueError, match=r"needs 10 points per image, got 3"):
        PointPatchInferer(roi_size=8, point_counts=(1, 10))(image, net, points)


def test_point_outside_image_is_rejected():
    with pytest.raises(ValueError, match=r"point #1 \[3.0, 18.0, 2.0\] of batch item 0.*\(20, 18, 16\)"):
        PointPatchInferer(roi_size=8)(_image(), RecordingNet(), torch.tensor([[[1.0, 1.0, 1.0], [3.0, 18.0, 2.0]]]))
    with pytest.raises(ValueError, match="must return logits"):
        PointPatchInferer(roi_size=8)(_image(), lambda x, points: x, torch.tensor([[[1.0, 1.0, 1.0]]]))


def test_inferer_keeps_meta_for_invertd_and_grad_mode():
    volume = _volume((6, 5, 4), (2.0, 2.0, 3.0))
    pipeline = Compose([ScaleResampled("image")])
    item = pipeline({"image": volume})
    batch = list_data_collate([item])["image"]  # (1, 1, 12, 10, 12) MetaTensor, as a DataLoader gives it
    out = PointPatchInferer(roi_size=8)(batch, BumpNet(), torch.tensor([[[5.0, 4.0, 6.0]]]))
    assert isinstance(out, MetaTensor) and out.is_batch
    pred = decollate_batch(out)[0]
    torch.testing.assert_close(pred.affine, item["image"].affine)
    assert [op["class"] for op in pred.applied_operations] == ["ScaleResampled"]
    inverted = Invertd("pred", transform=pipeline, orig_keys="image", nearest_interp=False)(
        {"image": item["image"], "pred": pred}
    )["pred"]
    assert inverted.shape == (1, 6, 5, 4) and 0 < float(inverted.max()) < 1
    torch.testing.assert_close(inverted.affine, volume.affine)

    class Scaled(BumpNet):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, patch, points):
            return super().forward(patch, points) * self.w

    net, points = Scaled(), torch.tensor([[[5.0, 4.0, 6.0]]])
    assert PointPatchInferer(roi_size=8)(batch, net, points).requires_grad
    with torch.no_grad():
        assert not PointPatchInferer(roi_size=8)(batch, net, points).requires_grad


# ---------------------------------------------------------------- datalist


def _tool():
    spec = importlib.util.spec_from_file_location("make_split_datalist", REPO_ROOT / "tools" / "make_split_datalist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_split_datalist_maps_to_msd_layout():
    tool = _tool()
    splits = {
        "pancreas": {
            "train": {
                "pancreas_010": ["Training/pancreas_010/image.nii.gz", "x"],
                "pancreas_002": ["Training/pancreas_002/image.nii.gz", "y"],
            },
            "val": {"pancreas_005": ["a", "b"]},
            "test": {},
        }
    }
    out = tool.split_datalist(splits, "pancreas")
    assert out == {
        "training": [
            {"image": "imagesTr/pancreas_002.nii.gz", "label": "labelsTr/pancreas_002.nii.gz"},
            {"image": "imagesTr/pancreas_010.nii.gz", "label": "labelsTr/pancreas_010.nii.gz"},
        ],
        "validation": [{"image": "imagesTr/pancreas_005.nii.gz", "label": "labelsTr/pancreas_005.nii.gz"}],
        "test": [],
    }
    with pytest.raises(ValueError, match="'kits' is not supported"):
        tool.split_datalist(splits, "kits")
    splits["pancreas"]["test"] = {"pancreas_002": ["a", "b"]}
    with pytest.raises(ValueError, match="'pancreas_002'.*'train' and 'test'"):
        tool.split_datalist(splits, "pancreas")


def test_committed_datalist_matches_the_split_file():
    if not SPLITS.is_file():
        pytest.skip(f"split file not found at {SPLITS}")
    assert DATALIST.read_text() == _tool().datalist_text("pancreas", str(SPLITS))


def test_committed_datalist_loads_with_monai(tmp_path):
    counts = {key: len(items) for key, items in json.loads(DATALIST.read_text()).items()}
    assert counts == {"training": 196, "validation": 28, "test": 57}
    items = load_decathlon_datalist(str(DATALIST), data_list_key="training", base_dir=str(tmp_path))
    assert len(items) == 196
    for item in items:
        for key, folder in (("image", "imagesTr"), ("label", "labelsTr")):
            path = Path(item[key])
            assert path.is_absolute() and path.parent == tmp_path / folder and path.name.startswith("pancreas_")
