"""SAMIHS's boundary-sensitive loss: the Boundary DoU loss (Sun et al., MICCAI 2023) as SAMIHS computes it
(spec: samus_hq_samihs_medsam.md 3.4, addendum 3.3 item 6).

With a binary target ``g`` and probabilities ``p = sigmoid(logits)``, over the **whole batch** at once:

* ``t_c`` (boundary count): foreground pixels with at least one background 4-neighbour (the image border counts as
  background); ``t_s`` (area): foreground pixels;
* ``alpha = min(2 * (1 - (t_c + 1e-5) / (t_s + 1e-5)) - 1, 0.8)``  (so ``alpha = 1 - 2 t_c / t_s``, truncated);
* ``I = sum(p g)``, ``Y = sum(g^2)``, ``Z = sum(p^2)``;
  ``L = (Z + Y - 2 I + 1e-5) / (Z + Y - (1 + alpha) I + 1e-5)``.

Names as in the addendum (item 6), which keeps the two parametrisations apart: in the paper's form
``L = (|G u P| - |G n P|) / (|G u P| - gamma |G n P|)`` the coefficient is ``gamma = alpha``; in the Dice-like form, for
binary ``p``, ``L = 1 - 2 beta TP / (2 beta TP + FP + FN)`` with ``beta = (1 - alpha) / 2 = t_c / t_s``, at least 0.1
(the truncation): the TP weight is the boundary-to-area ratio (small objects weigh their overlap more). ``beta`` is
``t_c / t_s``, not ``1 - t_c / t_s``. MONAI has no Boundary DoU loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BoundaryDoUBCELoss", "BoundaryDoULoss", "boundary_and_area"]

ALPHA_MAX = 0.8
SMOOTH = 1e-5
_CROSS = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])


def boundary_and_area(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(t_c, t_s)`` of a binary ``(B, 1, H, W)`` target, counted over the whole batch."""
    g = (target > 0.5).float()
    neighbours = F.conv2d(g, _CROSS.to(g)[None, None], padding=1) * g  # 5 = interior, 1..4 = boundary, 0 = bg
    t_c = torch.count_nonzero((neighbours > 0) & (neighbours < 5))
    return t_c.float(), torch.count_nonzero(g).float()


class BoundaryDoULoss(nn.Module):
    """``forward(logits (B, 1, H, W), target (B, 1, H, W) binary)`` -> scalar (see the module docstring)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape != target.shape or logits.ndim != 4 or logits.shape[1] != 1:
            raise ValueError(
                f"expected logits and target (B, 1, H, W), got {tuple(logits.shape)}, {tuple(target.shape)}"
            )
        t_c, t_s = boundary_and_area(target)
        alpha = torch.clamp(2 * (1 - (t_c + SMOOTH) / (t_s + SMOOTH)) - 1, max=ALPHA_MAX)
        p, g = torch.sigmoid(logits), target.float()
        intersect, y_sum, z_sum = (p * g).sum(), (g * g).sum(), (p * p).sum()
        return (z_sum + y_sum - 2 * intersect + SMOOTH) / (z_sum + y_sum - (1 + alpha) * intersect + SMOOTH)


class BoundaryDoUBCELoss(nn.Module):
    """SAMIHS's training loss: ``(1 - bd_weight) * BCEWithLogits(pos_weight) + bd_weight * BoundaryDoU``
    (published: ``pos_weight=2``, ``bd_weight=0.5``)."""

    def __init__(self, pos_weight: float = 2.0, bd_weight: float = 0.5) -> None:
        super().__init__()
        self.bce = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(float(pos_weight)))
        self.boundary = BoundaryDoULoss()
        self.bd_weight = float(bd_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bce = self.bce(logits, target.float())
        return (1 - self.bd_weight) * bce + self.bd_weight * self.boundary(logits, target)
