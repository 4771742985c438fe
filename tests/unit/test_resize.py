"""common.transforms.resize against OpenCV (cv2 is a test-only reference; production code never imports it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.transforms.resize import (
    area_resize,
    area_resize_matrices,
    longest_side_size,
    minmax_normalise,
    nearest_resize,
    pad_bottom_right,
    resize_longest_side,
    scale_coords_longest_side,
)

cv2 = pytest.importorskip("cv2")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Hundreds of tiny matmuls: on a shared 2-core machine, thread hand-offs dominate (~30x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TOL = 1e-4 * 255  # the agreement asked for, relative to a 0..255 range; measured differences are ~6e-5 absolute

NAMED_CASES = [
    ((101, 122), (212, 256)),  # reference 3 mm slice: enlarging (INTER_AREA's bilinear-like rule)
    ((512, 512), (256, 256)),  # integer shrink (OpenCV's fast block-mean path)
    ((130, 70), (256, 138)),  # enlarging, non-integer factors
    ((7, 300), (6, 256)),  # shrinking, non-integer
    ((7, 300), (14, 150)),  # mixed: rows grow, columns shrink
    ((300, 7), (150, 14)),  # mixed, the other way round
    ((333, 257), (256, 198)),  # shrinking, non-integer
    ((100, 100), (30, 70)),
    ((14, 30), (58, 30)),  # 14 -> 58: needs OpenCV's float32 rounding of the coefficient (row 29)
    ((1, 5), (3, 9)),
    ((5, 1), (2, 4)),
    ((9, 9), (9, 9)),
]


def _cv2_area(img: np.ndarray, size) -> np.ndarray:
    return cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def _round_half_up(x: torch.Tensor) -> np.ndarray:
    return torch.floor(x + 0.5).numpy().astype(int)


@pytest.mark.parametrize("in_size,out_size", NAMED_CASES)
def test_area_resize_matches_cv2_float32(in_size, out_size):
    rng = np.random.default_rng(sum(in_size) * 1000 + sum(out_size))
    img = (rng.random(in_size) * 255).astype(np.float32)
    ours = area_resize(torch.from_numpy(img), out_size)
    assert ours.shape == out_size and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), _cv2_area(img, out_size), rtol=0, atol=TOL)


def test_area_resize_matches_cv2_random_shapes():
    rng = np.random.default_rng(7)
    worst = 0.0
    for _ in range(300):
        in_size = tuple(int(v) for v in rng.integers(1, 90, 2))
        out_size = tuple(int(v) for v in rng.integers(1, 180, 2))
        img = (rng.random(in_size) * 255).astype(np.float32)
        diff = np.abs(area_resize(torch.from_numpy(img), out_size).numpy() - _cv2_area(img, out_size)).max()
        worst = max(worst, float(diff))
    assert worst <= TOL, worst


def test_weight_matrices_equal_cv2_impulse_responses():
    """Every coefficient, both OpenCV rules: the area table and the bilinear-like rule (also on a shrinking axis)."""
    for n_in in range(1, 41):
        eye = np.eye(n_in, dtype=np.float64)
        for n_out in range(1, 81):
            # horizontal scale 1: the vertical matrix alone (area table if shrinking, grow rule if enlarging)
            own = cv2.resize(eye, (n_in, n_out), interpolation=cv2.INTER_AREA)
            # horizontal x2 (even columns are exact copies): OpenCV's mixed case, grow rule on the vertical axis
            mixed = cv2.resize(eye, (2 * n_in, n_out), interpolation=cv2.INTER_AREA)[:, ::2]
            wv, _ = area_resize_matrices((n_in, n_in), (n_out, n_in))
            wm, _ = area_resize_matrices((n_in, n_in), (n_out, 2 * n_in))
            np.testing.assert_allclose(wv.numpy(), own, rtol=0, atol=1e-6, err_msg=f"{n_in}->{n_out}")
            np.testing.assert_allclose(wm.numpy(), mixed, rtol=0, atol=1e-6, err_msg=f"mixed {n_in}->{n_out}")


def test_grow_rule_uses_float32_coefficient():
    # 14 -> 58, output row 29: (29+1) - 7*58/14 is 0.999999999999996 in double, 1.0f in float, so OpenCV takes
    # source row 6 with weight 1; computing the coefficient in double would give row 7.
    wh, _ = area_resize_matrices((14, 1), (58, 1))
    assert wh[29, 6] == 1.0 and wh[29].sum() == 1.0


def test_torch_area_mode_is_not_inter_area_when_enlarging():
    img = (np.random.default_rng(0).random((101, 122)) * 255).astype(np.float32)
    torch_area = torch.nn.functional.interpolate(torch.from_numpy(img)[None, None], size=(212, 256), mode="area")[0, 0]
    assert np.abs(torch_area.numpy() - _cv2_area(img, (212, 256))).max() > 1.0
    assert np.abs(area_resize(torch.from_numpy(img), (212, 256)).numpy() - _cv2_area(img, (212, 256))).max() <= TOL


@pytest.mark.parametrize("grow", [True, False])
def test_area_resize_uint8_rounds_to_cv2(grow):
    rng = np.random.default_rng(11 if grow else 12)
    equal = total = 0
    for _ in range(60):
        in_size = tuple(int(v) for v in rng.integers(3, 70, 2))
        if grow:
            out_size = tuple(int(v * f) for v, f in zip(in_size, rng.uniform(1.05, 3.0, 2)))
        else:
            out_size = tuple(max(1, int(v / f)) for v, f in zip(in_size, rng.uniform(1.05, 4.0, 2)))
        img = rng.integers(0, 256, in_size).astype(np.uint8)
        ours = _round_half_up(area_resize(torch.from_numpy(img), out_size))
        ref = _cv2_area(img, out_size).astype(int)
        assert np.abs(ours - ref).max() <= 1, (in_size, out_size)
        equal += int((ours == ref).sum())
        total += ref.size
    fraction = equal / total
    # measured: ~0.94 when enlarging (OpenCV's 11-bit fixed-point coefficients), ~0.999 when shrinking
    assert fraction > (0.9 if grow else 0.995), fraction


@pytest.mark.parametrize(
    "in_size,out_size", [((512, 512), (256, 256)), ((300, 200), (150, 100)), ((7, 300), (14, 150))]
)
def test_area_resize_uint8_exact_for_halving(in_size, out_size):
    # OpenCV's 2x2 mean and its fixed-point 2-tap blend round ties up (torch.round, ties to even, misses ~13 % of
    # pixels here); its other integer factors round sum * float(1/area) to even, so no one rule is exact everywhere
    img = np.random.default_rng(2).integers(0, 256, in_size).astype(np.uint8)
    np.testing.assert_array_equal(_round_half_up(area_resize(img, out_size)), _cv2_area(img, out_size))


def test_area_resize_batched_channels_dtype():
    rng = np.random.default_rng(3)
    img = (rng.random((101, 122, 3)) * 255).astype(np.float32)  # OpenCV's (H, W, C)
    ref = _cv2_area(img, (212, 256))
    batch = torch.from_numpy(img).permute(2, 0, 1)[None].repeat(2, 1, 1, 1)  # (2, 3, H, W)
    ours = area_resize(batch, (212, 256))
    assert ours.shape == (2, 3, 212, 256)
    np.testing.assert_allclose(ours[1].permute(1, 2, 0).numpy(), ref, rtol=0, atol=TOL)
    assert area_resize(batch.double(), (50, 60)).dtype == torch.float64
    assert area_resize(torch.ones(4, 4, dtype=torch.uint8), (2, 2)).dtype == torch.float32
    np.testing.assert_allclose(area_resize(img[..., 0], (60, 61)).numpy(), _cv2_area(img[..., 0], (60, 61)), atol=TOL)


def test_nearest_resize_matches_cv2():
    rng = np.random.default_rng(5)
    for _ in range(200):
        in_size = tuple(int(v) for v in rng.integers(1, 80, 2))
        out_size = tuple(int(v) for v in rng.integers(1, 160, 2))
        lab = rng.integers(0, 6, in_size).astype(np.uint8)
        ref = cv2.resize(lab, (out_size[1], out_size[0]), interpolation=cv2.INTER_NEAREST)
        ours = nearest_resize(torch.from_numpy(lab), out_size)
        assert ours.dtype == torch.uint8
        np.testing.assert_array_equal(ours.numpy(), ref)


def test_longest_side_size_reference_rule():
    assert longest_side_size(101, 122, 256) == (212, 256)
    assert longest_side_size(130, 70, 256) == (256, 138)
    assert longest_side_size(512, 512, 256) == (256, 256)
    assert longest_side_size(7, 300, 256) == (6, 256)
    rng = np.random.default_rng(0)
    for h, w in rng.integers(1, 2000, (200, 2)):
        s = 256 * 1.0 / max(h, w)
        assert longest_side_size(int(h), int(w), 256) == (int(h * s + 0.5), int(w * s + 0.5))
    with pytest.raises(ValueError):
        longest_side_size(0, 5, 256)


def test_resize_longest_side_modes():
    rng = np.random.default_rng(1)
    img = (rng.random((3, 101, 122)) * 255).astype(np.float32)
    out = resize_longest_side(torch.from_numpy(img), 256)
    assert out.shape == (3, 212, 256)
    np.testing.assert_allclose(out[0].numpy(), _cv2_area(img[0], (212, 256)), atol=TOL)
    lab = rng.integers(0, 4, (130, 70)).astype(np.uint8)
    np.testing.assert_array_equal(
        resize_longest_side(lab, 256, mode="nearest").numpy(),
        cv2.resize(lab, (138, 256), interpolation=cv2.INTER_NEAREST),
    )
    with pytest.raises(ValueError, match="mode"):
        resize_longest_side(img, 256, mode="bicubic")


def test_pad_bottom_right():
    x = torch.arange(12.0).reshape(1, 3, 4) + 1
    out = pad_bottom_right(x, (5, 6))
    assert out.shape == (1, 5, 6)
    assert torch.equal(out[:, :3, :4], x) and out[:, 3:].abs().sum() == 0 and out[:, :, 4:].abs().sum() == 0
    assert pad_bottom_right(x, 4, value=-1.0)[0, 3].eq(-1).all()
    with pytest.raises(ValueError, match="pad"):
        pad_bottom_right(x, (2, 6))


def test_minmax_normalise():
    x = torch.tensor([[2.0, 4.0], [6.0, 10.0]])
    assert torch.allclose(minmax_normalise(x), torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    assert torch.equal(minmax_normalise(torch.full((3, 3), 7.0)), torch.zeros(3, 3))  # eps: constant -> 0
    b = torch.stack([x, 2 * x + 100])
    per_item = minmax_normalise(b, dim=(-2, -1))
    assert torch.allclose(per_item[0], per_item[1])
    whole = minmax_normalise(b)
    assert whole.min() == 0 and whole.max() == 1 and whole[0].max() < 0.1


def test_litemedsam_slice_pipeline_against_numpy_cv2_reference():
    """Resize (INTER_AREA) -> min-max [0, 1] -> pad to 256, as the reference, on a 3-channel slice."""
    rng = np.random.default_rng(4)
    slice_u8 = rng.integers(0, 256, (130, 70)).astype(np.uint8)
    rgb = np.repeat(slice_u8[..., None], 3, axis=-1).astype(np.float32)
    h, w = longest_side_size(130, 70, 256)
    ref = _cv2_area(rgb, (h, w))
    ref = (ref - ref.min()) / np.clip(ref.max() - ref.min(), 1e-8, None)
    ref = np.pad(ref, ((0, 256 - h), (0, 256 - w), (0, 0))).transpose(2, 0, 1)
    x = torch.from_numpy(rgb).permute(2, 0, 1)
    ours = pad_bottom_right(minmax_normalise(resize_longest_side(x, 256)), 256)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-5)


def test_scale_coords_longest_side():
    box = [10, 20, 100, 121]
    out = scale_coords_longest_side(box, 101, 122, 256)
    assert out.tolist() == [float(int(v * 256 / 122)) for v in box]
    assert out.dtype == torch.float32
