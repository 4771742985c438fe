"""common.transforms.intensity: CT window presets and MedSAM's non-zero percentile normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import ScaleIntensityRanged, ScaleIntensityRangePercentilesd

from common.transforms.intensity import (
    CT_WINDOWS,
    CTWindowd,
    NonZeroPercentileNormalize,
    NonZeroPercentileNormalized,
    window_range,
)


def test_presets_and_window_range():
    assert CT_WINDOWS["abdomen"] == (40, 400)
    assert CT_WINDOWS["chest"] == (-600, 1500)
    assert CT_WINDOWS["brain"] == (40, 80)
    assert window_range("abdomen") == (-160.0, 240.0)
    assert window_range("chest") == (-1350.0, 150.0)
    assert window_range("brain") == (0.0, 80.0)
    assert window_range("medsam_v0") == (-500.0, 1000.0)
    assert window_range("Abdomen") == (-160.0, 240.0)
    assert window_range((-160, 1500)) == (-910.0, 590.0)
    assert window_range([50, 350]) == (-125.0, 225.0)  # a JSON list from a bundle config


def test_window_range_errors():
    with pytest.raises(ValueError) as err:
        window_range("lung")
    for name in CT_WINDOWS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="width"):
        window_range((40, 0))
    with pytest.raises(ValueError, match="pair"):
        window_range((40, 400, 3))
    with pytest.raises(ValueError):
        window_range(None)


def test_ctwindowd_exact_values_and_meta():
    hu = torch.tensor([[[-3000.0, -160.0, -60.0, 40.0, 240.0, 3000.0]]])
    img = MetaTensor(hu, meta={"filename_or_obj": "ct.nii.gz"})
    t = CTWindowd("image", window="abdomen")
    assert isinstance(t, ScaleIntensityRanged)
    out = t({"image": img})["image"]
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "ct.nii.gz"
    assert out.dtype == torch.float32
    assert torch.allclose(out.as_tensor(), torch.tensor([[[0.0, 0.0, 0.25, 0.5, 1.0, 1.0]]]))
    u8 = CTWindowd("image", window=(40, 400), b_max=255.0)({"image": hu.numpy()})["image"]  # numpy in, tensor out
    np.testing.assert_allclose(np.asarray(u8), [[[0.0, 0.0, 63.75, 127.5, 255.0, 255.0]]])
    v0 = CTWindowd("image", window="medsam_v0")({"image": torch.tensor([[-600.0, -500.0, 250.0, 1000.0]])})["image"]
    assert torch.allclose(v0, torch.tensor([[0.0, 0.0, 0.5, 1.0]]))
    with pytest.raises(ValueError, match="presets"):
        CTWindowd("image", window="liver")


def _medsam_reference(image: np.ndarray) -> np.ndarray:
    """MedSAM's MR rule, written out from its description (percentiles of x > 0, clip, min-max, zeros to 0)."""
    lo, hi = np.percentile(image[image > 0], 0.5), np.percentile(image[image > 0], 99.5)
    out = np.clip(image, lo, hi)
    out = (out - out.min()) / (out.max() - out.min()) * 255.0
    out[image == 0] = 0
    return out


def _mr_like(rng, shape=(1, 24, 20, 10)):
    img = rng.gamma(2.0, 200.0, shape).astype(np.float32)
    img[..., :5, :] = 0  # background band
    img[0, 0, 0, 0] = 20000.0  # outlier, clipped by the upper percentile
    return img


def test_nonzero_percentile_matches_reference_and_keeps_zeros():
    rng = np.random.default_rng(0)
    img = _mr_like(rng)
    out = NonZeroPercentileNormalized("image", b_max=255.0)({"image": img})["image"]
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, _medsam_reference(img.astype(np.float64)), rtol=1e-5, atol=1e-3)
    assert np.all(out[img == 0] == 0)
    assert out.min() == 0.0 and out.max() == 255.0
    unit = NonZeroPercentileNormalized("image")({"image": img})["image"]
    assert unit.max() == 1.0 and np.all(unit[img == 0] == 0.0)


def test_nonzero_percentile_b_min_and_torch_meta():
    rng = np.random.default_rng(1)
    img = MetaTensor(torch.from_numpy(_mr_like(rng)), meta={"filename_or_obj": "t1.nii.gz"})
    out = NonZeroPercentileNormalized("image", b_min=-1.0, b_max=1.0)({"image": img})["image"]
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "t1.nii.gz"
    assert torch.all(out[img == 0] == -1.0)
    assert out.min() == -1.0 and out.max() == 1.0
    plain = NonZeroPercentileNormalize()(img.as_tensor())
    assert type(plain) is torch.Tensor
    assert torch.allclose(plain, (out.as_tensor() + 1) / 2, atol=1e-6)


def test_differs_from_monai_all_voxel_percentiles():
    rng = np.random.default_rng(2)
    img = _mr_like(rng)
    ours = NonZeroPercentileNormalized("image")({"image": img})["image"]
    monai = ScaleIntensityRangePercentilesd("image", 0.5, 99.5, 0.0, 1.0, clip=True)({"image": img})["image"]
    fg = img > 0
    assert np.abs(np.asarray(monai)[fg] - ours[fg]).max() > 0.01


def test_foreground_positive_vs_nonzero_and_channel_wise():
    x = np.array([[-50.0, 0.0, 10.0, 20.0, 30.0, 40.0]], dtype=np.float32)
    pos = NonZeroPercentileNormalize(lower=0, upper=100)(x)
    np.testing.assert_allclose(pos, [[0.0, 0.0, 0.0, 1 / 3, 2 / 3, 1.0]], atol=1e-6)
    nz = NonZeroPercentileNormalize(lower=0, upper=100, foreground="nonzero")(x)
    np.testing.assert_allclose(nz, [[0.0, 0.0, 60 / 90, 70 / 90, 80 / 90, 1.0]], atol=1e-6)
    two = np.stack([x[0], x[0] * 10])  # (2, 6): the second channel has a 10x range
    cw = NonZeroPercentileNormalize(lower=0, upper=100, channel_wise=True)(two)
    np.testing.assert_allclose(cw[0], cw[1], atol=1e-6)
    with pytest.raises(ValueError):
        NonZeroPercentileNormalize(lower=60, upper=40)
    with pytest.raises(ValueError):
        NonZeroPercentileNormalize(foreground="all")


def test_large_tensor_uses_numpy_percentile_path():
    rng = np.random.default_rng(3)
    img = torch.from_numpy(rng.random((1, 120, 120, 80), dtype=np.float32))  # > 1M voxels
    out = NonZeroPercentileNormalize()(img)
    assert out.shape == img.shape and float(out.min()) == 0.0 and float(out.max()) == 1.0


def test_empty_foreground_error_names_key_and_file():
    img = MetaTensor(torch.zeros(1, 4, 4), meta={"filename_or_obj": "/data/empty_mr.nii.gz"})
    with pytest.raises(ValueError, match=r"'image'.*empty_mr\.nii\.gz"):
        NonZeroPercentileNormalized("image")({"image": img})
    with pytest.raises(ValueError, match="'mr'"):
        NonZeroPercentileNormalized("mr")({"mr": -np.ones((1, 3, 3), np.float32)})


def test_constant_foreground_maps_to_b_min():
    x = np.zeros((1, 4, 4), np.float32)
    x[0, 1:3, 1:3] = 5.0
    with pytest.warns(UserWarning, match="empty"):
        out = NonZeroPercentileNormalize()(x)
    assert np.all(out == 0.0)
