"""Gradient-norm clipping per parameter group for MONAI's SupervisedTrainer.

SupervisedTrainer has no clipping option; it fires ``IterationEvents.BACKWARD_COMPLETED`` between
``backward()`` and ``optimizer.step()``, which is where this handler clips. Under AMP the gradients are
unscaled first, so the threshold applies to true gradients.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch
from monai.engines.utils import IterationEvents

if TYPE_CHECKING:
    from monai.engines import SupervisedTrainer

__all__ = ["GradientClipHandler"]


class GradientClipHandler:
    """Clip the gradient norm of each group separately (``torch.nn.utils.clip_grad_norm_`` per group).

    Args:
        groups: modules or parameter iterables, e.g. ``[model.image_encoder, model.mask_decoder]`` (materialised
            once). Parameters without a gradient (frozen, unused) are skipped by torch.
        max_norm: norm threshold per group (3DSAM-adapter: 1.0 for encoder, decoder and prompt encoder).
        norm_type: p of the p-norm.
    """

    def __init__(
        self,
        groups: Sequence[torch.nn.Module | Iterable[torch.nn.Parameter]],
        max_norm: float = 1.0,
        norm_type: float = 2.0,
    ) -> None:
        self.groups = [list(g.parameters() if isinstance(g, torch.nn.Module) else g) for g in groups]
        if not self.groups or any(not g for g in self.groups):
            raise ValueError("GradientClipHandler needs non-empty parameter groups")
        self.max_norm, self.norm_type = float(max_norm), float(norm_type)
        self.last_norms: list[float] = []

    def attach(self, engine: SupervisedTrainer) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: SupervisedTrainer) -> None:
        scaler = getattr(engine, "scaler", None)
        if getattr(engine, "amp", False) and scaler is not None:
            scaler.unscale_(engine.optimizer)
        self.last_norms = [
            float(torch.nn.utils.clip_grad_norm_(g, self.max_norm, norm_type=self.norm_type)) for g in self.groups
        ]
