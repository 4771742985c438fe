"""Per-case, per-structure Dice and normalised surface Dice (NSD) for box-prompted evaluation.

MONAI's MetricsSaver writes one CSV per metric with classes as columns; evaluation of prompted models
is read per structure and per prompting protocol, so this writes one row per (case, protocol,
structure) as CSV and JSON, using MONAI's ``compute_dice`` and ``compute_surface_dice``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Mapping, Sequence, cast

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data.utils import affine_to_spacing
from monai.metrics import compute_dice, compute_surface_dice

from common.atomic import write_text_atomic
from common.transforms.io import output_stem

logger = logging.getLogger(__name__)


def highest_score_labels(scores: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """``(S, X, Y, Z)`` per-structure scores -> ``(X, Y, Z)`` int64 label map: ``s + 1`` for the structure with the
    highest score where it exceeds ``threshold``, else 0 (ties: the first). The rule of a label map that keeps each
    structure where masks overlap (``BoxPropagationInferer(overlap="highest")``)."""
    best, index = scores.max(dim=0)
    return torch.where(best > threshold, index + 1, torch.zeros_like(index))


def structure_scores(
    pred: torch.Tensor,
    target: torch.Tensor,
    spacing: Sequence[float],
    tolerance_mm: float = 2.0,
    use_subvoxels: bool = False,
):
    """Dice and NSD per channel of binary ``(C, X, Y, Z)`` masks -> two lists of C floats (NaN if the target is empty).

    ``use_subvoxels=True`` weights surface elements by area as DeepMind's ``surface-distance`` package does (used by
    the 3DSAM-adapter paper); ``False`` counts boundary voxels (MONAI's default, as the LiteMedSAM challenge).
    """
    p, t = pred[None].float(), target[None].float()
    dice = compute_dice(p, t, include_background=True, ignore_empty=True)[0]
    nsd = compute_surface_dice(
        p,
        t,
        class_thresholds=[tolerance_mm] * t.shape[1],
        include_background=True,
        spacing=list(spacing),
        use_subvoxels=use_subvoxels,
    )[0]
    return dice.tolist(), nsd.tolist()


class StructureMetricsReport:
    """Ignite handler: collect per-structure Dice/NSD for each case and write ``<output_dir>/<name>.csv|.json``.

    Expects decollated outputs with ``pred`` ``(P * S, X, Y, Z)`` (protocol-major channels, see
    ``EvaluationBoxesd``; a structure is where its channel exceeds ``threshold``) and ``label`` ``(S, X, Y, Z)``
    carrying its ``affine``; cases are named after the image file (or DICOM folder) without suffix. With
    ``label_map=True`` each protocol is also scored as the label map a user receives, the structures merged by
    :func:`highest_score_labels`, in rows of protocol ``"<protocol> label map"``.

    Args:
        output_dir: folder for the report files.
        structures: label values, in channel order.
        structure_names: display names (defaults to the values).
        protocols: protocol names, in channel-block order.
        tolerance_mm: NSD tolerance (2 mm, as the LiteMedSAM challenge).
        use_subvoxels: NSD over surface areas (see :func:`structure_scores`).
        name: file stem of the report.
        threshold: a structure's channel value above which a voxel belongs to it (0.5 for 0/1 masks; 0 for
            logit scores).
        label_map: also score the merged label map of each protocol (needs scores, not 0/1 masks, to merge).
    """

    def __init__(
        self,
        output_dir: str,
        structures: Sequence[int],
        structure_names: Sequence[str] | None = None,
        protocols: Sequence[str] = ("slices", "propagation"),
        tolerance_mm: float = 2.0,
        use_subvoxels: bool = False,
        name: str = "metrics",
        threshold: float = 0.5,
        label_map: bool = False,
    ):
        self.output_dir, self.name = output_dir, name
        self.threshold, self.label_map = threshold, label_map
        self.structures = [int(s) for s in structures]
        self.names = list(structure_names) if structure_names else [str(s) for s in self.structures]
        self.protocols, self.tolerance_mm, self.use_subvoxels = list(protocols), tolerance_mm, use_subvoxels
        self.rows: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def __call__(self, engine: Engine) -> None:
        self.collect(engine)

    def add_case(self, case: str, pred: torch.Tensor, label: torch.Tensor, spacing: Sequence[float]) -> list[dict]:
        """Score one case; returns (and keeps) its rows."""
        n = len(self.structures)
        scored = []
        for p, protocol in enumerate(self.protocols):
            channels = pred[p * n : (p + 1) * n]
            scored.append((protocol, channels > self.threshold))
            if self.label_map:
                merged = highest_score_labels(channels, self.threshold)
                scored.append((f"{protocol} label map", torch.stack([merged == s + 1 for s in range(n)])))
        rows = []
        for protocol, masks in scored:
            dice, nsd = structure_scores(masks, label, spacing, self.tolerance_mm, self.use_subvoxels)
            for s, value in enumerate(self.structures):
                if math.isnan(dice[s]):
                    continue
                rows.append(
                    {
                        "case": case,
                        "protocol": protocol,
                        "structure": self.names[s],
                        "label": value,
                        "dice": round(dice[s], 4),
                        "nsd": round(nsd[s], 4),
                    }
                )
        self.rows += rows
        return rows

    def collect(self, engine: Engine) -> None:
        # ignite types State.output as int | None; an evaluator with decollated batches holds one dict per case
        for item in cast(Sequence[Mapping[str, Any]], engine.state.output):
            label = item["label"]
            source = getattr(item.get("image", label), "meta", {}).get("filename_or_obj", f"case_{len(self.rows)}")
            case = output_stem(source)
            affine = np.asarray(getattr(label, "affine", np.eye(4)), dtype=np.float64)
            spacing = affine_to_spacing(affine, r=affine.shape[0] - 1, dtype=np.float64).tolist()
            for row in self.add_case(case, item["pred"].detach().cpu(), label.detach().cpu(), spacing):
                logger.info(
                    f"{row['case']} {row['protocol']:>11} {row['structure']:>14}: "
                    f"Dice {row['dice']:.3f} NSD {row['nsd']:.3f}"
                )

    def summary(self) -> dict:
        """Mean Dice/NSD per protocol (and label map) and structure over cases."""
        out: dict = {}
        for protocol in dict.fromkeys(r["protocol"] for r in self.rows):
            for name in self.names:
                sel = [r for r in self.rows if r["protocol"] == protocol and r["structure"] == name]
                if sel:
                    out.setdefault(protocol, {})[name] = {
                        "dice": round(float(np.mean([r["dice"] for r in sel])), 4),
                        "nsd": round(float(np.mean([r["nsd"] for r in sel])), 4),
                        "cases": len(sel),
                    }
        return out

    def write(self, engine: Engine | None = None) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        fields = ["case", "protocol", "structure", "label", "dice", "nsd"]
        lines = [",".join(fields)] + [",".join(str(r[f]) for f in fields) for r in self.rows]
        write_text_atomic(os.path.join(self.output_dir, f"{self.name}.csv"), "\n".join(lines) + "\n")
        report = {"tolerance_mm": self.tolerance_mm, "rows": self.rows, "summary": self.summary()}
        write_text_atomic(os.path.join(self.output_dir, f"{self.name}.json"), json.dumps(report, indent=4) + "\n")
        logger.info(f"wrote {len(self.rows)} rows to {os.path.join(self.output_dir, self.name)}.csv/.json")
