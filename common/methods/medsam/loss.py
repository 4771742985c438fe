"""MedSAM / LiteMedSAM segmentation loss.

MONAI has the Dice and BCE parts; the LiteMedSAM recipe adds an IoU-regression term on the
decoder's IoU head, which needs the network's IoU prediction next to the logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn


def mask_iou(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """IoU of ``sigmoid(logits) > 0.5`` with a binary target, per sample and channel: ``(B, C, ...) -> (B, C)``."""
    pred = logits > 0
    gt = target > 0.5
    dims = tuple(range(2, logits.ndim))
    inter = (pred & gt).sum(dims).float()
    union = (pred | gt).sum(dims).float()
    return inter / (union + eps)


class MedSAMLoss(nn.Module):
    """``Dice(sigmoid, squared_pred) + BCE-with-logits [+ iou_weight * MSE(iou_pred, IoU(pred > 0.5, gt))]``.

    Args:
        iou_weight: 1.0 for LiteMedSAM, 0.0 for MedSAM (Dice + BCE only).
        resize_logits: bilinearly resize logits to the target's size first (MedSAM computes the loss on
            logits upsampled to 1024; LiteMedSAM on the 256 low-res logits).

    Call: ``loss(pred, target)`` with ``pred`` the logits ``(B, 1, h, w)`` or ``(logits, iou_pred (B, 1))`` and
    ``target`` ``(B, 1, H, W)`` in {0, 1}.
    """

    def __init__(self, iou_weight: float = 1.0, resize_logits: bool = False):
        super().__init__()
        self.iou_weight = iou_weight
        self.resize_logits = resize_logits
        self.dice = DiceLoss(sigmoid=True, squared_pred=True, reduction="mean")

    def forward(self, pred, target: torch.Tensor) -> torch.Tensor:
        logits, iou_pred = pred if isinstance(pred, (tuple, list)) else (pred, None)
        if self.resize_logits and logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        if logits.shape != target.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
        target = target.float()
        loss = self.dice(logits, target) + F.binary_cross_entropy_with_logits(logits, target)
        if self.iou_weight:
            if iou_pred is None:
                raise ValueError("iou_weight > 0 needs the network's IoU prediction: pred must be (logits, iou_pred)")
            loss = loss + self.iou_weight * F.mse_loss(iou_pred, mask_iou(logits.detach(), target))
        return loss
