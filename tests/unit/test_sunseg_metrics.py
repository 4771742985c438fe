"""SUN-SEG evaluation (common.metrics.sunseg): hand-made cases, slow direct re-computations, file trees and reports."""

from __future__ import annotations

import csv
import json
import math
import statistics

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from common.metrics import sunseg as S

EPS = float(np.spacing(1))


def _disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _u8(mask: np.ndarray) -> np.ndarray:
    return mask.astype(np.uint8) * 255


def _save(path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


# ------------------------------------------------------------------------------------------------ reading, resizing
def test_resize_matches_hand_computed_cv2_values():
    # (1, 2) -> (1, 4): source x = 0.5 * (dx + 0.5) - 0.5 = -0.25 (clamped), 0.25, 0.75, 1.25 (clamped)
    row = np.array([[0, 255]], dtype=np.uint8)
    assert S.resize_bilinear_u8(row, (1, 4)).tolist() == [[0, 64, 191, 255]]
    assert S.resize_bilinear_u8(row.T, (4, 1)).ravel().tolist() == [0, 64, 191, 255]
    # 2x downscale averages 2x2 blocks and rounds half up as cv2 does: mean 0.5 -> 1, mean 0.25 -> 0, 0.75 -> 1
    img = np.array([[0, 0, 0, 0], [1, 1, 0, 1], [7, 9, 0, 0], [8, 8, 1, 2]], dtype=np.uint8)
    assert S.resize_bilinear_u8(img, (2, 2)).tolist() == [[1, 0], [8, 1]]
    same = S.resize_bilinear_u8(img, (4, 4))
    assert np.array_equal(same, img) and same is not img


def test_resize_agrees_with_float_bilinear_within_one_grey_level():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (23, 37), dtype=np.uint8)
    for size in [(50, 61), (11, 16), (23, 80), (9, 37)]:
        ref = F.interpolate(torch.from_numpy(img)[None, None].double(), size=size, mode="bilinear", align_corners=False)
        diff = np.abs(S.resize_bilinear_u8(img, size).astype(int) - ref[0, 0].numpy())
        assert S.resize_bilinear_u8(img, size).shape == size and diff.max() <= 1.0


def test_resize_equals_opencv_on_realistic_and_random_sizes():
    """The toolbox resizes predictions with ``cv2.resize`` (bilinear, 8-bit fixed point): equal pixel for pixel on
    PNS+'s 256 x 448 to SUN-SEG frame sizes, both ways, and on random sizes (opencv-python-headless is a test
    dependency; the library itself does not need OpenCV)."""
    import cv2

    rng = np.random.default_rng(0)
    pairs = [((256, 448), (1008, 1158)), ((1008, 1158), (256, 448)), ((352, 352), (1080, 1240))]
    pairs += [(tuple(rng.integers(2, 90, 2)), tuple(rng.integers(2, 90, 2))) for _ in range(200)]
    for src, dst in pairs:
        img = rng.integers(0, 256, src, dtype=np.uint8)
        expected = cv2.resize(img, (int(dst[1]), int(dst[0])), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(
            S.resize_bilinear_u8(img, (int(dst[0]), int(dst[1]))), expected, err_msg=str((src, dst))
        )


def test_read_grey_u8_follows_cv2_png_conversion(tmp_path):
    rgb = np.array([[[49, 253, 60], [90, 90, 90]]], dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    expected = [(9797 * 49 + 19234 * 253 + 3737 * 60) >> 15, 90]  # libpng's weights, truncated; grey kept
    assert expected[0] == 169 != np.asarray(Image.open(tmp_path / "rgb.png").convert("L"))[0, 0]  # Pillow says 170
    assert S.read_grey_u8(tmp_path / "rgb.png").tolist() == [expected]
    Image.fromarray(np.array([[1000, 65535]], dtype=np.uint16)).save(tmp_path / "i16.png")
    assert S.read_grey_u8(tmp_path / "i16.png").tolist() == [[3, 255]]  # high byte
    Image.fromarray(np.array([[True, False]])).save(tmp_path / "bin.png")
    assert S.read_grey_u8(tmp_path / "bin.png").tolist() == [[255, 0]]


def test_prepare_frame_resizes_normalises_and_binarises():
    gt = np.array([[128, 129], [0, 255]], dtype=np.uint8)
    p, g = S.prepare_frame(np.array([[51, 102], [153, 204]], dtype=np.uint8), gt)
    assert g.tolist() == [[False, True], [False, True]]
    assert np.allclose(p, [[0, 1 / 3], [2 / 3, 1]])
    p, _ = S.prepare_frame(np.full((2, 2), 51, np.uint8), gt)  # constant: only / 255
    assert np.allclose(p, 0.2)
    p, g = S.prepare_frame(np.array([[0, 255]], dtype=np.uint8), np.zeros((3, 4), np.uint8))
    assert p.shape == g.shape == (3, 4) and p.dtype == np.float64
    assert np.allclose(p, S.resize_bilinear_u8(np.array([[0, 255]], np.uint8), (3, 4)) / 255)
    with pytest.raises(ValueError, match="uint8"):
        S.prepare_frame(np.zeros((2, 2)), gt)


# ------------------------------------------------------------------------------------------- hand-made frame cases
def test_empty_gt():
    pred = np.array([[0, 255, 51], [102, 0, 0]], dtype=np.uint8)
    p, g = S.prepare_frame(pred, np.zeros((2, 3), np.uint8))
    assert S.s_measure(p, g) == pytest.approx(1 - p.mean())
    assert S.weighted_f_measure(p, g) == 0.0
    curves = S.threshold_curves(p, g)
    for key in ("dice", "sensitivity", "iou", "specificity"):
        assert curves[key].shape == (256,) and not curves[key].any()  # TP = 0 everywhere
    clip = S.score_clip([(pred, np.zeros((2, 3), np.uint8))] * 3)
    assert S.summarise({"c": clip})["maxDice"] == 0.0


def test_full_gt():
    pred = np.array([[0, 255, 51], [102, 204, 0]], dtype=np.uint8)
    p, g = S.prepare_frame(pred, np.full((2, 3), 255, np.uint8))
    assert S.s_measure(p, g) == pytest.approx(p.mean())
    assert np.isnan(S.threshold_curves(p, g)["specificity"][-1])  # TN + FP = 0 with TP > 0, as upstream


def test_perfect_map():
    gt = _u8(_disc(40, 48, 20, 22, 9))
    p, g = S.prepare_frame(gt.copy(), gt)
    assert S.s_measure(p, g) == pytest.approx(1.0, abs=1e-12)
    assert S.weighted_f_measure(p, g) == pytest.approx(1.0, abs=1e-6)
    summary = S.summarise({"c": S.score_clip([(gt, gt)] * 3)})
    assert summary["maxDice"] == 1.0 and summary["maxIoU"] == 1.0
    assert summary["meanSen"] == 1.0  # every threshold t <= 1 keeps the whole GT
    assert summary["meanDice"] < 1.0  # t = 0 takes every pixel
    assert summary["MAE"] == 0.0 and summary["maxFm"] == pytest.approx(1.0)
    assert summary["maxEm"] == pytest.approx(gt.size / (gt.size - 1))  # the toolbox divides by N - 1


def test_shifted_disc_dice_counted_by_hand():
    h, w = 64, 64
    a, b = _disc(h, w, 32, 30, 10), _disc(h, w, 32, 34, 10)  # shifted by 4 px
    inter, na, nb = int(np.sum(a & b)), int(a.sum()), int(b.sum())
    dice_shift = 2 * inter / (na + nb)
    dice_all = 2 * na / (na + h * w)  # threshold 0 keeps every pixel
    p, g = S.prepare_frame(_u8(b), _u8(a))
    curves = S.threshold_curves(p, g)
    assert np.allclose(curves["dice"][:255], dice_shift) and curves["dice"][255] == pytest.approx(dice_all)
    assert np.allclose(curves["sensitivity"][:255], inter / na)
    assert np.allclose(curves["iou"][:255], inter / (na + nb - inter))
    assert np.allclose(curves["specificity"][:255], (h * w - na - (nb - inter)) / (h * w - na))
    summary = S.summarise({"c": S.score_clip([(_u8(b), _u8(a))], drop_ends=False)})
    assert summary["maxDice"] == pytest.approx(dice_shift)
    assert summary["meanDice"] == pytest.approx((255 * dice_shift + dice_all) / 256)


def test_s_measure_terms_against_direct_computation():
    pred = np.array(
        [[0.1, 0.9, 0.8, 0.2, 0.0], [0.3, 1.0, 0.7, 0.6, 0.1], [0.0, 0.4, 0.9, 0.5, 0.2], [0.2, 0.1, 0.0, 0.3, 0.0]]
    )
    gt = np.zeros((4, 5), bool)
    gt[0:3, 1:4] = True
    gt[2, 3] = False
    cells = [(i, j) for i in range(4) for j in range(5)]
    fg = [pred[i, j] for i, j in cells if gt[i, j]]
    bg = [1 - pred[i, j] for i, j in cells if not gt[i, j]]

    def obj(v):
        m = statistics.fmean(v)
        return 2 * m / (m * m + 1 + statistics.stdev(v) + EPS)

    u = len(fg) / 20
    s_o = u * obj(fg) + (1 - u) * obj(bg)
    cy = round(statistics.fmean(i for i, j in cells if gt[i, j])) + 1  # centroid row/col (+1, MATLAB)
    cx = round(statistics.fmean(j for i, j in cells if gt[i, j])) + 1
    assert (cx, cy) == (3, 2)

    def block_q(rows, cols):
        xs = [pred[i, j] for i in rows for j in cols]
        ys = [float(gt[i, j]) for i in rows for j in cols]
        n, mx, my = len(xs), statistics.fmean(xs), statistics.fmean(ys)
        vx = sum((x - mx) ** 2 for x in xs) / (n - 1)
        vy = sum((y - my) ** 2 for y in ys) / (n - 1)
        cxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / (n - 1)
        num, den = 4 * mx * my * cxy, (mx * mx + my * my) * (vx + vy)
        return num / (den + EPS) if num != 0 else (1.0 if den == 0 else 0.0), n / 20

    blocks = [block_q(r, c) for r in (range(0, cy), range(cy, 4)) for c in (range(0, cx), range(cx, 5))]
    s_r = sum(q * wgt for q, wgt in blocks)
    assert S.s_object_term(pred, gt) == pytest.approx(s_o, abs=1e-12)
    assert S.s_region_term(pred, gt) == pytest.approx(s_r, abs=1e-12)
    assert S.s_measure(pred, gt) == pytest.approx(0.5 * s_o + 0.5 * s_r, abs=1e-12)


def test_s_measure_nan_region_counts_as_zero_like_upstream():
    gt = np.zeros((6, 6), bool)
    gt[:, 5] = True  # centroid column 5 -> split at 6 = width: empty right blocks -> NaN -> max(0, NaN) = 0
    assert math.isnan(S.s_region_term(np.where(gt, 1.0, 0.0), gt))
    assert S.s_measure(np.where(gt, 1.0, 0.0), gt) == 0.0


def test_weighted_f_measure_against_slow_loop():
    rng = np.random.default_rng(3)
    h, w = 10, 12
    gt = np.zeros((h, w), bool)
    gt[3:7, 4:9] = True  # a rectangle: every background pixel has a unique nearest GT pixel
    pred = np.clip(np.where(gt, 0.7, 0.2) + rng.normal(0, 0.2, (h, w)), 0, 1)
    fg = [(i, j) for i in range(h) for j in range(w) if gt[i, j]]
    err = np.abs(pred - gt)
    dist, err_t = np.zeros((h, w)), np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            d = sorted((math.hypot(i - a, j - b), (a, b)) for a, b in fg)
            assert gt[i, j] or d[0][0] < d[1][0]
            dist[i, j], err_t[i, j] = d[0][0], err[d[0][1]]
    k = [[math.exp(-(di * di + dj * dj) / 50) for dj in range(-3, 4)] for di in range(-3, 4)]
    k_sum = sum(map(sum, k))
    tp_w, fp_w, ew_fg = float(gt.sum()), 0.0, []
    for i in range(h):
        for j in range(w):
            ea = sum(
                k[di + 3][dj + 3] / k_sum * err_t[i + di, j + dj]
                for di in range(-3, 4)
                for dj in range(-3, 4)
                if 0 <= i + di < h and 0 <= j + dj < w
            )
            if gt[i, j]:
                ew_fg.append(min(ea, err[i, j]))
                tp_w -= ew_fg[-1]
            else:
                fp_w += err[i, j] * (2 - math.exp(math.log(0.5) / 5 * dist[i, j]))
    recall = 1 - sum(ew_fg) / len(ew_fg)
    precision = tp_w / (tp_w + fp_w + EPS)
    expected = 2 * recall * precision / (recall + precision + EPS)
    assert 0.1 < expected < 0.99
    assert S.weighted_f_measure(pred, gt) == pytest.approx(expected, abs=1e-12)


def test_e_and_f_measure_simple_cases():
    gt = np.zeros((4, 4), bool)
    gt[1:3, 1:3] = True
    adp_f, fm = S.f_measure(gt.astype(float), gt)
    assert adp_f == pytest.approx(1.0) and fm[0] == pytest.approx(1.0)
    assert fm[-1] == pytest.approx(1.3 * 0.25 / (0.3 * 0.25 + 1))  # threshold 0: precision 4/16, recall 1
    adp_e, em = S.e_measure(np.zeros((4, 4)), np.zeros((4, 4), bool))
    assert adp_e == 0.0  # threshold 0 marks every pixel foreground on an empty GT
    assert np.allclose(em[:255], 16 / 15) and em[255] == 0.0


# ------------------------------------------------------------------------------------------------ clips, summaries
def test_first_and_last_frames_are_dropped():
    gt = _u8(_disc(20, 20, 10, 10, 5))
    garbage = 255 - gt
    middle = [(gt, gt), (gt, gt), (gt, gt)]
    clip = S.score_clip([(garbage, gt)] + middle + [(garbage, gt)])
    assert clip["n_frames"] == 3
    assert clip["Smeasure"] == pytest.approx(1.0) and clip["dice"].max() == 1.0
    ref = S.score_clip(middle, drop_ends=False)
    assert clip["Smeasure"] == ref["Smeasure"] and np.array_equal(clip["dice"], ref["dice"])
    kept_all = S.score_clip([(garbage, gt)] + middle + [(garbage, gt)], drop_ends=False)
    assert kept_all["n_frames"] == 5 and kept_all["Smeasure"] < 0.7
    with pytest.raises(ValueError, match="no frame"):
        S.score_clip([(gt, gt), (gt, gt)])


def _direct_dice_curve(pred_u8: np.ndarray, gt_u8: np.ndarray) -> np.ndarray:
    p = pred_u8 / 255
    p = (p - p.min()) / (p.max() - p.min())
    g = gt_u8 > 128
    out = []
    for t in np.linspace(1, 0, 256):
        b = p >= t
        tp = int(np.sum(b & g))
        out.append(0.0 if tp == 0 else 2 * tp / (g.sum() + b.sum()))
    return np.array(out)


def test_curves_are_averaged_over_clips_before_max_and_mean():
    gt = np.zeros((8, 8), np.uint8)
    gt[:, :4] = 255
    pred_a = np.where(gt > 0, 255, 0).astype(np.uint8)
    pred_a[0:6, 4:] = 150  # clip A: best at high thresholds
    pred_b = np.where(gt > 0, 100, 0).astype(np.uint8)
    pred_b[7, 7] = 255  # clip B: GT only found below 100/255
    clips = {"a": S.score_clip([(pred_a, gt)], drop_ends=False), "b": S.score_clip([(pred_b, gt)], drop_ends=False)}
    mean_curve = (_direct_dice_curve(pred_a, gt) + _direct_dice_curve(pred_b, gt)) / 2
    summary = S.summarise(clips)
    assert summary["maxDice"] == pytest.approx(mean_curve.max())
    assert summary["meanDice"] == pytest.approx(mean_curve.mean())
    assert summary["maxDice"] > summary["meanDice"]
    per_clip_max = np.mean([_direct_dice_curve(p, gt).max() for p in (pred_a, pred_b)])
    assert summary["maxDice"] < per_clip_max - 0.1  # max of the mean curve, not the mean of the maxima
    assert summary["Smeasure"] == pytest.approx((clips["a"]["Smeasure"] + clips["b"]["Smeasure"]) / 2)
    assert list(summary) == list(S.METRIC_KEYS)


# --------------------------------------------------------------------------------------------- trees and reports
def test_frame_sort_key_orders_sun_seg_names_numerically():
    names = [
        "case_M_20181001100941_0U62372100109341_1_005_001-1_a10_ayy_image1.png",
        "case1_a2_ayy_image10.png",
        "case1_a2_ayy_image9.png",
        "case_M_20181001100941_0U62372100109341_1_005_001-1_a9_ayy_image0002.png",
    ]
    assert [S.frame_sort_key(n) for n in names] == [(10, 1), (2, 10), (2, 9), (9, 2)]
    assert sorted(names, key=S.frame_sort_key) == [names[2], names[1], names[3], names[0]]
    assert sorted(["10.png", "9.png", "100.png"], key=S.frame_sort_key) == ["9.png", "10.png", "100.png"]
    assert S.frame_sort_key("/data/GT/case3_1/x_a4_ayy_image0007.png") == (4, 7)
    with pytest.raises(ValueError, match="cannot order"):
        S.frame_sort_key("frame_last.png")


def _two_clip_tree(tmp_path):
    gt_root, pred_root = tmp_path / "GT", tmp_path / "Pred"
    disc = _u8(_disc(24, 30, 12, 14, 6))
    shifted = _u8(_disc(24, 30, 12, 17, 6))
    names = ["c_a2_ayy_image9.png", "c_a2_ayy_image10.png", "c_a10_ayy_image1.png", "c_a10_ayy_image2.png"]
    # clip A in true order: garbage, perfect, perfect, garbage (name order would keep a garbage frame)
    frames_a = [(255 - disc, disc), (disc, disc), (disc, disc), (255 - disc, disc)]
    for name, (p, g) in zip(names, frames_a):
        _save(gt_root / "case1_1" / name, g)
        _save(pred_root / "case1_1" / name, p)
    soft = np.clip(shifted.astype(float) * 0.8 + 20, 0, 255).astype(np.uint8)
    small = np.asarray(Image.fromarray(soft).resize((15, 12), Image.NEAREST))  # a prediction at half size
    frames_b = [(shifted, disc), (small, disc), (soft, np.zeros_like(disc)), (shifted, disc), (shifted, disc)]
    for k, (p, g) in enumerate(frames_b):
        _save(gt_root / "case2" / f"{k + 1}.png", g)
        _save(pred_root / "case2" / f"{k + 1}.png", p)
    return pred_root, gt_root, frames_a, frames_b


def test_evaluate_tree_on_two_clips(tmp_path):
    pred_root, gt_root, frames_a, frames_b = _two_clip_tree(tmp_path)
    rows, summary = S.evaluate_tree(pred_root, gt_root)
    assert [(r["clip"], r["n_frames"]) for r in rows] == [("case1_1", 2), ("case2", 3)]
    assert rows[0]["Smeasure"] == pytest.approx(1.0) and rows[0]["maxDice"] == 1.0  # sorted numerically
    expected = S.summarise({"a": S.score_clip(frames_a), "b": S.score_clip(frames_b)})
    assert summary.keys() == expected.keys()
    for key, value in expected.items():
        assert summary[key] == pytest.approx(value, abs=1e-12), key
    assert rows[1]["Smeasure"] == pytest.approx(S.score_clip(frames_b)["Smeasure"])


def test_missing_prediction_is_reported_by_name(tmp_path):
    pred_root, gt_root, _, _ = _two_clip_tree(tmp_path)
    (pred_root / "case2" / "1.png").unlink()  # the first frame is never scored: not needed, as upstream
    S.evaluate_tree(pred_root, gt_root)
    (pred_root / "case2" / "3.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"case2/3\.png"):
        S.evaluate_tree(pred_root, gt_root)
    (gt_root / "case3").mkdir()
    _save(gt_root / "case3" / "1.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="case3"):
        S.evaluate_tree(pred_root, gt_root)


def test_write_reports(tmp_path):
    pred_root, gt_root, _, _ = _two_clip_tree(tmp_path)
    rows, summary = S.evaluate_tree(pred_root, gt_root)
    summary = dict(summary, meanSpe=float("nan"))
    out = tmp_path / "reports"
    csv_path, json_path = S.write_reports(rows, summary, out)
    assert sorted(p.name for p in out.iterdir()) == ["per_clip.csv", "summary.json"]  # no temporary files left
    with open(csv_path, newline="") as f:
        back = list(csv.DictReader(f))
    assert [r["clip"] for r in back] == ["case1_1", "case2"] and back[1]["n_frames"] == "3"
    for row, parsed in zip(rows, back):
        for key in S.METRIC_KEYS:
            assert float(parsed[key]) == row[key] or math.isnan(row[key]), key  # full precision round trip
    doc = json.loads(open(json_path).read())
    assert doc["n_clips"] == 2 and doc["n_frames"] == 5
    assert doc["metrics"]["meanSpe"] is None and doc["metrics"]["maxDice"] == summary["maxDice"]
