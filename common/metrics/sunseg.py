"""SUN-SEG video polyp segmentation evaluation: a re-implementation of the VPS toolbox (``eval/vps_evaluator.py`` and
``eval/metrics.py`` of GewelsJI/VPS), with the same numbers.

Per frame the prediction PNG is read as 8-bit grey, resized to the GT size with cv2-style bilinear interpolation if
needed, divided by 255 and min-max normalised (if not constant); the GT is ``> 128``. Metrics: S-measure (alpha 0.5),
weighted F-measure (beta 1), MAE, E-measure and F-measure (beta^2 0.3; adaptive and 256-level curves) and the
``Medical`` threshold curves (Dice, sensitivity, IoU, specificity at ``linspace(1, 0, 256)``).

Each clip is sorted by frame index and its first and last frames are dropped; frame scores are averaged within a clip,
then clip means over clips. Curves are averaged over clips first, then reduced over thresholds (``maxX`` / ``meanX``).

Upstream quirks kept on purpose: a NaN S-measure (an S-measure block of fewer than two pixels, i.e. a GT centroid on
the last row/column or in the top-left pixel, or a one-pixel GT or background) counts as 0, as ``max(0, nan)`` does
there; specificity is NaN at thresholds with TP > 0 on a frame whose GT covers it entirely.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from common.atomic import write_text_atomic
from common.data.sunseg import frame_sort_key

__all__ = [
    "CURVE_KEYS",
    "METRIC_KEYS",
    "THRESHOLDS",
    "e_measure",
    "evaluate_tree",
    "f_measure",
    "frame_sort_key",
    "mae",
    "prepare_frame",
    "read_grey_u8",
    "resize_bilinear_u8",
    "s_measure",
    "s_object_term",
    "s_region_term",
    "score_clip",
    "score_frame",
    "summarise",
    "threshold_curves",
    "weighted_f_measure",
    "write_reports",
]

EPS = float(np.spacing(1))
THRESHOLDS = np.linspace(1.0, 0.0, 256)
"""The ``Medical`` thresholds, high to low; a pixel is foreground where ``P >= t``."""
CURVE_KEYS = ("dice", "sensitivity", "iou", "specificity", "em", "fm")
"""Per-clip curves of length 256 (``em`` and ``fm`` are indexed by the uint8 threshold ``255 - i``)."""
SCALAR_KEYS = ("Smeasure", "wFmeasure", "MAE", "adpEm", "adpFm")
METRIC_KEYS = (
    "Smeasure",
    "wFmeasure",
    "MAE",
    "adpEm",
    "meanEm",
    "maxEm",
    "adpFm",
    "meanFm",
    "maxFm",
    "meanSen",
    "maxSen",
    "meanSpe",
    "maxSpe",
    "meanDice",
    "maxDice",
    "meanIoU",
    "maxIoU",
)
"""Keys of :func:`summarise`, in the toolbox's table order."""
_CURVE_OF = {"Em": "em", "Fm": "fm", "Sen": "sensitivity", "Spe": "specificity", "Dice": "dice", "IoU": "iou"}


# ----------------------------------------------------------------------------------------------- reading and resizing
def read_grey_u8(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as ``cv2.imread(path, cv2.IMREAD_GRAYSCALE)`` does for PNG -> uint8 ``(H, W)``.

    Colour and palette images use libpng's grey conversion ``(9797 R + 19234 G + 3737 B) >> 15`` (grey pixels kept),
    alpha is dropped, 16-bit samples keep their high byte.
    """
    with Image.open(path) as im:
        if im.mode in ("L", "1", "LA", "La"):
            return np.asarray(im.convert("L") if im.mode == "1" else im.getchannel(0), dtype=np.uint8).copy()
        if im.mode.startswith("I"):  # 16-bit grey (I;16*) or 32-bit int
            return (np.asarray(im).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8)
        rgb = np.asarray(im.convert("RGB"), dtype=np.int64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    grey = (9797 * r + 19234 * g + 3737 * b) >> 15
    return np.where((r == g) & (g == b), r, grey).astype(np.uint8)


def _linear_taps(dst_len: int, src_len: int, clamp_weights: bool) -> tuple[np.ndarray, ...]:
    """cv2 INTER_LINEAR taps along one axis -> (i0, i1, w0, w1), int64 ``(dst_len,)``; weights in 1/2048 units."""
    scale = 1.0 / (dst_len / src_len)
    pos = ((np.arange(dst_len, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(pos).astype(np.int64)
    frac = (pos - i0.astype(np.float32)).astype(np.float32)
    if clamp_weights:  # columns: cv2 clamps index and weight at the borders; rows: only the row index
        outside = (i0 < 0) | (i0 >= src_len - 1)
        frac = np.where(outside, np.float32(0.0), frac).astype(np.float32)
        i0 = np.clip(i0, 0, src_len - 1)
    w0 = np.rint((np.float32(1.0) - frac) * np.float32(2048.0)).astype(np.int64)
    w1 = np.rint(frac * np.float32(2048.0)).astype(np.int64)
    return np.clip(i0, 0, src_len - 1), np.clip(i0 + 1, 0, src_len - 1), w0, w1


def resize_bilinear_u8(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.resize(img, (W, H))`` (INTER_LINEAR) of a uint8 ``(h, w)`` image -> uint8 ``(H, W)``, ``size=(H, W)``.

    Half-pixel centres, no antialiasing, edge replication; cv2's fixed-point arithmetic (11-bit weights, its SIMD
    vertical pass ``(((S0 >> 4) * b0 >> 16) + ((S1 >> 4) * b1 >> 16) + 2) >> 2``): bit-exact with cv2 4.10 (x86-64).
    """
    src = np.asarray(img)
    if src.ndim != 2 or src.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W) image, got {src.dtype} {src.shape}")
    out_h, out_w = int(size[0]), int(size[1])
    if out_h < 1 or out_w < 1:
        raise ValueError(f"output size must be positive, got {size}")
    if (out_h, out_w) == src.shape:
        return src.copy()
    x0, x1, a0, a1 = _linear_taps(out_w, src.shape[1], clamp_weights=True)
    y0, y1, b0, b1 = _linear_taps(out_h, src.shape[0], clamp_weights=False)
    s = src.astype(np.int64)
    rows = s[:, x0] * a0 + s[:, x1] * a1  # (h, W), value * 2048
    top = (rows[y0] >> 4) * b0[:, None] >> 16
    bottom = (rows[y1] >> 4) * b1[:, None] >> 16
    return np.clip((top + bottom + 2) >> 2, 0, 255).astype(np.uint8)


def prepare_frame(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``(H', W')`` prediction and uint8 ``(H, W)`` GT -> (float64 ``(H, W)`` in [0, 1], bool ``(H, W)``).

    The prediction is resized to the GT size if needed, divided by 255 and min-max normalised unless constant; the
    GT is ``> 128``.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    for name, a in (("pred", pred), ("gt", gt)):
        if a.ndim != 2 or a.dtype != np.uint8:
            raise ValueError(f"{name} must be a uint8 (H, W) array, got {a.dtype} {a.shape}")
    if pred.shape != gt.shape:
        pred = resize_bilinear_u8(pred, (gt.shape[0], gt.shape[1]))
    p = pred / 255
    lo, hi = p.min(), p.max()
    if hi != lo:
        p = (p - lo) / (hi - lo)
    return p, gt > 128


# ------------------------------------------------------------------------------------------------------- S-measure
def _object_score(x: np.ndarray) -> float:
    """O(x) = 2 mean / (mean^2 + 1 + std + eps), std with N-1; NaN for fewer than 2 values (as upstream)."""
    if x.size < 2:
        return math.nan
    m = x.mean()
    return float(2 * m / (m**2 + 1 + x.std(ddof=1) + EPS))


def s_object_term(pred: np.ndarray, gt: np.ndarray) -> float:
    """Object term S_o = u O(P in G) + (1 - u) O(1 - P in not-G), u = mean(G); pred float ``(H, W)``, gt bool."""
    u = gt.mean()
    return float(u * _object_score(pred[gt]) + (1 - u) * _object_score(1 - pred[~gt]))


def _block_ssim(p: np.ndarray, g: np.ndarray) -> float:
    """SSIM-like score of one block (variances with N-1); NaN for a block of fewer than 2 pixels (as upstream)."""
    n = p.size
    if n < 2:
        return math.nan
    x, y = p.mean(), g.mean()
    sigma_x = np.sum((p - x) ** 2) / (n - 1)
    sigma_y = np.sum((g - y) ** 2) / (n - 1)
    sigma_xy = np.sum((p - x) * (g - y)) / (n - 1)
    num = 4 * x * y * sigma_xy
    den = (x**2 + y**2) * (sigma_x + sigma_y)
    if num != 0:
        return float(num / (den + EPS))
    return 1.0 if den == 0 else 0.0


def _split_point(gt: np.ndarray) -> tuple[int, int]:
    """(x, y) split column/row: the GT centroid rounded half-to-even, plus 1 (MATLAB); image centre if empty."""
    h, w = gt.shape
    area = gt.sum()
    if area == 0:
        x, y = np.round(w / 2), np.round(h / 2)
    else:
        x = np.round(np.sum(gt.sum(axis=0) * np.arange(w)) / area)
        y = np.round(np.sum(gt.sum(axis=1) * np.arange(h)) / area)
    return int(x) + 1, int(y) + 1


def s_region_term(pred: np.ndarray, gt: np.ndarray) -> float:
    """Region term S_r: area-weighted block SSIM over the 4 blocks cut at :func:`_split_point`."""
    h, w = gt.shape
    x, y = _split_point(gt)
    g = gt.astype(np.float64)
    w1 = x * y / (h * w)
    w2 = y * (w - x) / (h * w)
    w3 = (h - y) * x / (h * w)
    w4 = 1 - w1 - w2 - w3
    return float(
        w1 * _block_ssim(pred[:y, :x], g[:y, :x])
        + w2 * _block_ssim(pred[:y, x:], g[:y, x:])
        + w3 * _block_ssim(pred[y:, :x], g[y:, :x])
        + w4 * _block_ssim(pred[y:, x:], g[y:, x:])
    )


def s_measure(pred: np.ndarray, gt: np.ndarray, alpha: float = 0.5) -> float:
    """Structure measure of a prepared frame (pred float ``(H, W)`` in [0, 1], gt bool); in [0, 1], 1 = perfect."""
    y = gt.mean()
    if y == 0:
        return float(1 - pred.mean())
    if y == 1:
        return float(pred.mean())
    s = alpha * s_object_term(pred, gt) + (1 - alpha) * s_region_term(pred, gt)
    return float(s) if s > 0 else 0.0  # upstream max(0, s): NaN -> 0


# ------------------------------------------------------------------------------------------------ weighted F-measure
def _gaussian_7x7(sigma: float = 5.0) -> np.ndarray:
    """MATLAB ``fspecial('gaussian', 7, sigma)``: (7, 7), sums to 1."""
    yy, xx = np.ogrid[-3:4, -3:4]
    k = np.exp(-(xx * xx + yy * yy) / (2 * sigma * sigma))
    k[k < np.finfo(k.dtype).eps * k.max()] = 0
    return k / k.sum()


def weighted_f_measure(pred: np.ndarray, gt: np.ndarray, beta: float = 1.0) -> float:
    """Weighted F-beta (Margolin et al.) of a prepared frame; ``(1 + beta) R P / (R + beta P)``; 0 for an empty GT."""
    if not gt.any():
        return 0.0
    bg = ~gt
    dist, (iy, ix) = ndimage.distance_transform_edt(bg, return_indices=True)
    err = np.abs(pred - gt)
    err_t = err.copy()
    err_t[bg] = err[iy[bg], ix[bg]]  # background takes the error of its nearest GT pixel
    err_a = ndimage.convolve(err_t, _gaussian_7x7(), mode="constant", cval=0.0)
    err_min = np.where(gt & (err_a < err), err_a, err)
    importance = np.where(bg, 2 - np.exp(np.log(0.5) / 5 * dist), 1.0)
    err_w = err_min * importance
    tp_w = np.sum(gt) - np.sum(err_w[gt])
    fp_w = np.sum(err_w[bg])
    recall = 1 - np.mean(err_w[gt])
    precision = tp_w / (tp_w + fp_w + EPS)
    return float((1 + beta) * recall * precision / (recall + beta * precision + EPS))


# ------------------------------------------------------------------------------------------ MAE, E- and F-measure
def mae(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean absolute error of a prepared frame."""
    return float(np.mean(np.abs(pred - gt)))


def _adaptive_mask(pred: np.ndarray) -> np.ndarray:
    return pred >= min(2 * pred.mean(), 1)


def _uint8_cumulative(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts of GT / non-GT pixels with ``uint8(255 P) >= 255 - i``, i = 0..255 -> two int64 ``(256,)``."""
    q = (pred * 255).astype(np.uint8)
    fg = np.cumsum(np.bincount(q[gt], minlength=256)[::-1])
    bg = np.cumsum(np.bincount(q[~gt], minlength=256)[::-1])
    return fg, bg


def _enhanced_alignment(tp: Any, fp: Any, n_gt: int, n: int) -> Any:
    """E-measure from the counts of a binarised prediction (scalars or arrays)."""
    pred_fg = tp + fp
    pred_bg = n - pred_fg
    if n_gt == 0:
        total = pred_bg
    elif n_gt == n:
        total = pred_fg
    else:
        fn = n_gt - tp
        mean_p, mean_g = pred_fg / n, n_gt / n
        parts = (
            (tp, 1 - mean_p, 1 - mean_g),
            (fp, 1 - mean_p, -mean_g),
            (fn, -mean_p, 1 - mean_g),
            (pred_bg - fn, -mean_p, -mean_g),
        )
        total = 0
        for count, dp, dg in parts:
            align = 2 * (dp * dg) / (dp**2 + dg**2 + EPS)
            total = total + (align + 1) ** 2 / 4 * count
    return total / (n - 1 + EPS)


def e_measure(pred: np.ndarray, gt: np.ndarray) -> tuple[float, np.ndarray]:
    """Enhanced-alignment measure of a prepared frame -> (adaptive, curve float64 ``(256,)``)."""
    n, n_gt = gt.size, int(np.count_nonzero(gt))
    mask = _adaptive_mask(pred)
    adaptive = _enhanced_alignment(int(np.count_nonzero(mask & gt)), int(np.count_nonzero(mask & ~gt)), n_gt, n)
    fg, bg = _uint8_cumulative(pred, gt)
    curve = np.broadcast_to(np.asarray(_enhanced_alignment(fg, bg, n_gt, n), dtype=np.float64), (256,))
    return float(adaptive), curve.copy()


def f_measure(pred: np.ndarray, gt: np.ndarray, beta2: float = 0.3) -> tuple[float, np.ndarray]:
    """F-measure of a prepared frame with beta^2 = ``beta2`` -> (adaptive, curve float64 ``(256,)``)."""
    mask = _adaptive_mask(pred)
    inter = int(np.count_nonzero(mask & gt))
    if inter == 0:
        adaptive = 0.0
    else:
        pre, rec = inter / np.count_nonzero(mask), inter / np.count_nonzero(gt)
        adaptive = (1 + beta2) * pre * rec / (beta2 * pre + rec)
    tp, fp = _uint8_cumulative(pred, gt)
    predicted = tp + fp
    predicted[predicted == 0] = 1
    precision = tp / predicted
    recall = tp / max(int(np.count_nonzero(gt)), 1)
    num = (1 + beta2) * precision * recall
    return float(adaptive), num / np.where(num == 0, 1, beta2 * precision + recall)


# ----------------------------------------------------------------------------------------------- threshold curves
def threshold_curves(pred: np.ndarray, gt: np.ndarray) -> dict[str, np.ndarray]:
    """Dice, sensitivity, IoU and specificity of ``P >= t`` for t in :data:`THRESHOLDS` -> float64 ``(256,)`` each.

    All four are 0 where TP = 0 (the toolbox's ``Medical`` class).
    """
    n, n_gt = gt.size, int(np.count_nonzero(gt))
    n_pred = n - np.searchsorted(np.sort(pred, axis=None), THRESHOLDS, side="left")
    tp = n_gt - np.searchsorted(np.sort(pred[gt]), THRESHOLDS, side="left")
    fn, fp = n_gt - tp, n_pred - tp
    tn = n - n_pred - fn
    with np.errstate(divide="ignore", invalid="ignore"):
        curves = {
            "dice": 2 * tp / (n_gt + n_pred),
            "sensitivity": tp / n_gt,
            "iou": tp / (fn + n_pred),
            "specificity": tn / (tn + fp),
        }
    return {k: np.where(tp == 0, 0.0, v).astype(np.float64) for k, v in curves.items()}


# ---------------------------------------------------------------------------------------------- frames and clips
def score_frame(pred: np.ndarray, gt: np.ndarray) -> dict[str, Any]:
    """All metrics of one frame (uint8 prediction and GT) -> scalars of :data:`SCALAR_KEYS`, curves of
    :data:`CURVE_KEYS`."""
    p, g = prepare_frame(pred, gt)
    adp_em, em = e_measure(p, g)
    adp_fm, fm = f_measure(p, g)
    out: dict[str, Any] = {
        "Smeasure": s_measure(p, g),
        "wFmeasure": weighted_f_measure(p, g),
        "MAE": mae(p, g),
        "adpEm": adp_em,
        "adpFm": adp_fm,
        "em": em,
        "fm": fm,
    }
    out.update(threshold_curves(p, g))
    return out


def score_clip(pairs: Iterable[tuple[np.ndarray, np.ndarray]], drop_ends: bool = True) -> dict[str, Any]:
    """Mean frame scores of one clip from its (pred uint8, gt uint8) frames in frame order -> dict with ``n_frames``,
    the scalars of :data:`SCALAR_KEYS` and the curves of :data:`CURVE_KEYS` (``(256,)``).

    ``drop_ends`` drops the first and last frame (the toolbox's rule); frames are scored one at a time.
    """
    sums: dict[str, Any] = {}
    count = 0
    pending: tuple[np.ndarray, np.ndarray] | None = None
    for i, pair in enumerate(pairs):
        if drop_ends:
            if i == 0:
                continue
            held, pending = pending, pair  # score a frame only once a later one exists
            if held is None:
                continue
            pair = held
        scores = score_frame(*pair)
        for k, v in scores.items():
            sums[k] = sums[k] + v if k in sums else np.asarray(v, dtype=np.float64)
        count += 1
    if count == 0:
        raise ValueError("no frame left to score" + (" after dropping the first and last frame" if drop_ends else ""))
    out: dict[str, Any] = {"n_frames": count}
    for k in SCALAR_KEYS:
        out[k] = float(sums[k] / count)
    for k in CURVE_KEYS:
        out[k] = sums[k] / count
    return out


def summarise(clip_results: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Sequence-level metrics from :func:`score_clip` results keyed by clip -> floats keyed by :data:`METRIC_KEYS`.

    Scalars are means over clips; curves are averaged over clips per threshold, then ``maxX`` / ``meanX`` over the
    256 thresholds (so ``maxDice`` is not the mean of per-clip maxima).
    """
    if not clip_results:
        raise ValueError("no clip results to summarise")
    clips = list(clip_results.values())
    scalars = {k: float(np.mean([c[k] for c in clips])) for k in SCALAR_KEYS}
    curves = {k: np.mean(np.stack([np.asarray(c[k], dtype=np.float64) for c in clips]), axis=0) for k in CURVE_KEYS}
    out: dict[str, float] = {}
    for key in METRIC_KEYS:
        if key in scalars:
            out[key] = scalars[key]
        else:
            reduce = np.max if key.startswith("max") else np.mean
            out[key] = float(reduce(curves[_CURVE_OF[key[4:] if key.startswith("mean") else key[3:]]]))
    return out


# ------------------------------------------------------------------------------------------------------ file trees
def _clip_plan(pred_root: Path, gt_root: Path) -> dict[str, list[tuple[Path, Path]]]:
    """Clip name -> (prediction, GT) paths of its scored frames (first and last dropped); checks files exist."""
    if not gt_root.is_dir():
        raise FileNotFoundError(f"GT folder not found: {gt_root}")
    cases = sorted(p.name for p in gt_root.iterdir() if p.is_dir())
    if not cases:
        raise ValueError(f"no clip folders in {gt_root}")
    plan, missing = {}, []
    for case in cases:
        gts = sorted((p for p in (gt_root / case).glob("*.png") if p.is_file()), key=lambda p: frame_sort_key(p.name))
        if len(gts) < 3:
            raise ValueError(
                f"clip {case!r} has {len(gts)} GT frame(s); at least 3 are needed (first and last are dropped)"
            )
        plan[case] = [(pred_root / case / g.name, g) for g in gts[1:-1]]
        missing += [p for p, _ in plan[case] if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise FileNotFoundError(f"{len(missing)} prediction(s) missing for scored GT frames: {shown}")
    return plan


def evaluate_tree(
    pred_root: str | os.PathLike, gt_root: str | os.PathLike, progress: bool = False
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Evaluate ``pred_root/<clip>/<name>.png`` against ``gt_root/<clip>/<name>.png`` -> (per-clip rows, summary).

    Rows hold ``clip``, ``n_frames`` and :data:`METRIC_KEYS` of that clip alone; the summary is :func:`summarise`
    over all clips. As in the toolbox, only the scored frames (all but each clip's first and last) need a prediction;
    a missing one raises ``FileNotFoundError`` before anything is scored.
    """
    plan = _clip_plan(Path(pred_root), Path(gt_root))
    items: Iterable[tuple[str, list[tuple[Path, Path]]]] = plan.items()
    if progress:
        from tqdm import tqdm

        items = tqdm(items, total=len(plan), desc="SUN-SEG clips")
    results = {}
    for case, pairs in items:
        frames = ((read_grey_u8(p), read_grey_u8(g)) for p, g in pairs)
        results[case] = score_clip(frames, drop_ends=False)
    rows = [{"clip": case, "n_frames": r["n_frames"], **summarise({case: r})} for case, r in results.items()]
    return rows, summarise(results)


def _json_safe(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def write_reports(
    per_clip_rows: Sequence[Mapping[str, Any]], summary: Mapping[str, float], out_dir: str | os.PathLike
) -> tuple[str, str]:
    """Write ``out_dir/per_clip.csv`` (one row per clip, floats at full precision) and ``out_dir/summary.json``
    (``n_clips``, ``n_frames``, ``metrics``; NaN as null), each atomically -> the two paths."""
    if not per_clip_rows:
        raise ValueError("no per-clip rows to write")
    fields = list(per_clip_rows[0])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in per_clip_rows:
        writer.writerow({k: float(v) if isinstance(v, (float, np.floating)) else v for k, v in row.items()})
    doc = {
        "n_clips": len(per_clip_rows),
        "n_frames": int(sum(int(r.get("n_frames", 0)) for r in per_clip_rows)),
        "metrics": {k: _json_safe(float(v)) for k, v in summary.items()},
    }
    csv_path = write_text_atomic(os.path.join(out_dir, "per_clip.csv"), buf.getvalue())
    json_path = write_text_atomic(
        os.path.join(out_dir, "summary.json"), json.dumps(doc, indent=4, allow_nan=False) + "\n"
    )
    return csv_path, json_path
