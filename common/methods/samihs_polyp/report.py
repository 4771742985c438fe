"""The SUN-SEG toolbox run on what an evaluation wrote, when it completes (ignite handler)."""

from __future__ import annotations

import logging
import os

from ignite.engine import Engine, Events

from common.metrics.sunseg import evaluate_tree, write_reports

__all__ = ["SunsegReport"]


class SunsegReport:
    """At ``COMPLETED``: :func:`~common.metrics.sunseg.evaluate_tree` of ``pred_dir/<clip>/*.png`` against
    ``gt_dir/<clip>/*.png``, then ``per_clip.csv`` and ``summary.json`` in ``output_dir``; the summary's headline
    numbers (S-alpha, weighted F, maxDice, meanSen) are logged and stored in ``engine.state.metrics``."""

    HEADLINE = ("Smeasure", "wFmeasure", "maxDice", "meanSen")

    def __init__(self, pred_dir: str, gt_dir: str, output_dir: str) -> None:
        self.pred_dir, self.gt_dir, self.output_dir = pred_dir, gt_dir, output_dir

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        rows, summary = evaluate_tree(self.pred_dir, self.gt_dir, progress=True)
        os.makedirs(self.output_dir, exist_ok=True)
        write_reports(rows, summary, self.output_dir)
        engine.state.metrics.update({f"sunseg_{k}": summary[k] for k in self.HEADLINE})
        shown = ", ".join(f"{k} {summary[k]:.3f}" for k in self.HEADLINE)
        logging.getLogger(__name__).info(f"SUN-SEG toolbox over {len(rows)} clips: {shown}")
