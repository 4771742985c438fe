"""Prompted inference on one 2-D frame: the image embedding once, one decoder call per object, a label map.

MONAI's inferers call the network once per input; here one embedding serves every object's prompt (the user's
classes or boxes), so the encoder runs once per image however many objects are asked for.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.inferers import Inferer

__all__ = ["ObjectPromptInferer"]


class ObjectPromptInferer(Inferer):
    """``inferer(images (1, C, S, S), network, obj_points, obj_point_labels, obj_boxes, obj_has_box, obj_labels,
    out_size)`` -> label map ``(1, 1, H, W)`` int64 at ``out_size = (H, W)`` (SAM layout, rows first).

    Objects come from :class:`~common.methods.samus.prompts.UserPromptsd` (batch 1: ``(1, K, ...)``). Each object's
    low-res logits are resized bilinearly to ``out_size``; a pixel takes the label of the object with the highest
    logit among those above 0 (sigmoid > 0.5), so overlapping objects do not overwrite each other by prompt order.
    ``network`` provides ``encode`` and ``decode`` (:class:`~common.networks.samus.Samus`); the encoder output is
    passed back to ``decode`` as it is (HQ-SAMUS returns embeddings and its early feature).
    """

    def __call__(
        self,
        inputs: torch.Tensor,
        network,
        obj_points: torch.Tensor,
        obj_point_labels: torch.Tensor,
        obj_boxes: torch.Tensor,
        obj_has_box: torch.Tensor,
        obj_labels: torch.Tensor,
        out_size,
    ) -> torch.Tensor:
        if inputs.shape[0] != 1:
            raise ValueError(f"ObjectPromptInferer takes one image per call, got a batch of {inputs.shape[0]}")
        h, w = (int(v) for v in torch.as_tensor(out_size).reshape(-1)[:2])
        embeddings = network.encode(inputs)
        logits = []
        for k in range(obj_labels.shape[1]):
            labels = obj_point_labels[:, k]
            has_points = bool((labels >= 0).any())
            low_res, _ = network.decode(
                embeddings,
                point_coords=obj_points[:, k] if has_points else None,
                point_labels=labels if has_points else None,
                boxes=obj_boxes[:, k] if bool(obj_has_box[0, k]) else None,
            )
            logits.append(F.interpolate(low_res.float(), size=(h, w), mode="bilinear", align_corners=False)[:, 0])
        stacked = torch.stack(logits, dim=1)  # (1, K, H, W)
        best, index = stacked.max(dim=1, keepdim=True)
        label_map = obj_labels.to(stacked.device)[0][index]
        return torch.where(best > 0, label_map, torch.zeros_like(label_map))
