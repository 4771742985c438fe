"""Batch preparation for prompted networks in MONAI's SupervisedTrainer / SupervisedEvaluator.

MONAI's ``PrepareBatchExtraInput`` passes batch keys to the network but cannot add constant
arguments; prompted training also needs ``return_iou=True`` so the IoU head is trained, and it must
go through ``network.forward`` so DistributedDataParallel synchronises gradients.
"""

from __future__ import annotations

import torch
from monai.engines.utils import PrepareBatch, default_prepare_batch


class PrepareBoxPromptBatch(PrepareBatch):
    """``batch -> (image, label, (), {"boxes": (B, 1, 4) float, "return_iou": bool})``.

    Args:
        box_key: batch key holding one box per sample, ``(B, 4)`` in network-input pixels.
        return_iou: ask the network for ``(logits, iou_pred)`` (training with an IoU loss).
    """

    def __init__(self, box_key: str = "box", return_iou: bool = False):
        self.box_key = box_key
        self.return_iou = return_iou

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        boxes = torch.as_tensor(batchdata[self.box_key]).to(device=device, dtype=torch.float32)
        kwargs_: dict[str, torch.Tensor | bool] = {"boxes": boxes.reshape(boxes.shape[0], 1, 4)}
        if self.return_iou:
            kwargs_["return_iou"] = True
        return image, label, (), kwargs_
