"""Per-image binary segmentation metrics for 2-D prompted models (SAMUS's evaluation protocol), as CSV and JSON.

Per image: Dice, IoU, sensitivity, specificity (MONAI's ``compute_dice``, ``compute_iou``, confusion-matrix
metrics) and the 95th-percentile Hausdorff distance in pixels (MONAI ``compute_hausdorff_distance``), then
mean and standard deviation over images, as SAMUS reports them. SAMUS's published "HD" is not a contour distance:
its ``hausdorff`` call treats each image *row* of the 0/1 masks as one point and takes the Manhattan Hausdorff
distance between the two sets of rows (addendum 3.3 item 1). It is available only as the labelled option
``upstream_row_hd`` (:func:`row_vector_hausdorff`), for comparison with the paper.

Slices of volumes (SAMIHS: images whose meta holds ``slice_index``) are rows per slice, and the summary adds the
published subset, ``positive_slices`` (slices with foreground: SAMIHS reports Dice and HD there only), and
``volumes``: the 3-D Dice per volume from the slices' summed overlaps.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou, get_confusion_matrix
from monai.metrics.confusion_matrix import compute_confusion_matrix_metric

from common.atomic import write_text_atomic
from common.transforms.io import output_stem

__all__ = ["ImageMetricsReport", "image_scores", "row_vector_hausdorff"]

logger = logging.getLogger(__name__)
METRICS = ("dice", "iou", "sensitivity", "specificity", "hd95_px")


def row_vector_hausdorff(pred_hw: torch.Tensor, target_hw: torch.Tensor) -> float:
    """SAMUS's published "HD": the Manhattan Hausdorff distance between the rows of two ``(H, W)`` 0/1 masks,
    each row a point in ``W`` dimensions (the ``hausdorff`` package as SAMUS calls it); a count of differing pixels
    between the closest rows, not a contour distance."""
    d = torch.cdist(pred_hw.double(), target_hw.double(), p=1)
    return float(max(d.min(dim=1).values.max(), d.min(dim=0).values.max()))


def image_scores(pred: torch.Tensor, target: torch.Tensor, upstream_row_hd: bool = False) -> dict[str, float]:
    """Metrics of binary ``(1, H, W)`` masks (see the module docstring); NaN where a metric is undefined (e.g.
    Dice of an empty target and prediction, HD95 with an empty mask)."""
    p, t = (pred[None] > 0).float(), (target[None] > 0).float()
    cm = get_confusion_matrix(p, t, include_background=True)
    scores = {
        "dice": float(compute_dice(p, t, include_background=True, ignore_empty=False)[0, 0]),
        "iou": float(compute_iou(p, t, include_background=True, ignore_empty=False)[0, 0]),
        "sensitivity": float(compute_confusion_matrix_metric("sensitivity", cm)[0, 0]),
        "specificity": float(compute_confusion_matrix_metric("specificity", cm)[0, 0]),
        "hd95_px": float(compute_hausdorff_distance(p, t, include_background=True, percentile=95)[0, 0]),
    }
    if upstream_row_hd:
        scores["upstream_row_hd"] = row_vector_hausdorff(p[0, 0], t[0, 0])
    return scores


def _stats(values: Sequence[float]) -> dict[str, float]:
    finite = [v for v in values if np.isfinite(v)]
    if not finite:
        return {"mean": float("nan"), "std": float("nan"), "images": 0}
    return {"mean": round(float(np.mean(finite)), 4), "std": round(float(np.std(finite)), 4), "images": len(finite)}


class ImageMetricsReport:
    """Ignite handler: :func:`image_scores` for each decollated ``pred``/``label`` pair (binary ``(1, H, W)``),
    logged per image and written to ``<output_dir>/<name>.csv|.json`` with the mean and std over images."""

    def __init__(self, output_dir: str, name: str = "metrics", upstream_row_hd: bool = False) -> None:
        self.output_dir, self.name, self.upstream_row_hd = output_dir, name, upstream_row_hd
        self.rows: list[dict] = []
        self.overlaps: dict[str, list[float]] = {}  # volume -> [intersection, prediction + target] over its slices

    def _reset(self, engine: Engine | None = None) -> None:
        self.rows.clear()
        self.overlaps.clear()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def collect(self, engine: Engine) -> None:
        # an evaluator with decollated batches holds one dict per image
        for item in cast(Sequence[Mapping[str, Any]], engine.state.output):
            label, pred = item["label"].detach().cpu(), item["pred"].detach().cpu()
            meta = getattr(item.get("image", item["label"]), "meta", {})
            stem = output_stem(meta.get("filename_or_obj", f"image_{len(self.rows)}"))
            scores = image_scores(pred, label, self.upstream_row_hd)
            row: dict[str, Any] = {"image": stem}
            if "slice_index" in meta:
                p, t = pred > 0, label > 0
                row.update(slice=int(meta["slice_index"]), positive=bool(t.any()))
                counts = self.overlaps.setdefault(stem, [0.0, 0.0])
                counts[0] += float((p & t).sum())
                counts[1] += float(p.sum() + t.sum())
            row.update({k: round(v, 4) for k, v in scores.items()})
            self.rows.append(row)
            where = f"{stem} slice {row['slice']}" if "slice" in row else stem
            logger.info(f"{where}: " + " ".join(f"{k} {v:.3f}" for k, v in scores.items()))

    def summary(self) -> dict[str, Any]:
        names = [k for k in self.rows[0] if k not in ("image", "slice", "positive")] if self.rows else list(METRICS)
        out: dict[str, Any] = {k: _stats([r[k] for r in self.rows]) for k in names}
        if self.overlaps:
            positive = [r for r in self.rows if r["positive"]]
            out["positive_slices"] = {k: _stats([r[k] for r in positive]) for k in names}
            dice_3d = [2 * i / s if s > 0 else float("nan") for i, s in self.overlaps.values()]
            out["volumes"] = {"dice_3d": _stats(dice_3d)}
        return out

    def write(self, engine: Engine | None = None) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        fields = list(self.rows[0]) if self.rows else ["image"]
        lines = [",".join(fields)] + [",".join(str(r[f]) for f in fields) for r in self.rows]
        write_text_atomic(os.path.join(self.output_dir, f"{self.name}.csv"), "\n".join(lines) + "\n")
        summary = self.summary()
        report = {"rows": self.rows, "summary": summary}
        write_text_atomic(os.path.join(self.output_dir, f"{self.name}.json"), json.dumps(report, indent=4) + "\n")
        means = ", ".join(f"{k} {v['mean']:.4f} +- {v['std']:.4f}" for k, v in summary.items() if "mean" in v)
        logger.info(f"{len(self.rows)} images: {means}; wrote {os.path.join(self.output_dir, self.name)}.csv/.json")
