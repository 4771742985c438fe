"""SAMIHS on head-CT volumes: each prompted axial slice to the 1024 px model frame with the published per-slice
preprocessing, one embedding per slice, one decoder call per object, and the label maps back into the volume.

Slice preprocessing: :mod:`common.methods.samihs.slice_input` (the published percentile clip, or a CT window).
Prompts are file voxel indices ``[x, y, z]`` (clicks) and ``[x0, y0, z0, x1, y1, z1]`` (boxes, one 2-D box on each
slice ``z0..z1``).
"""

from __future__ import annotations

import torch
from monai.config import KeysCollection
from monai.inferers import Inferer
from monai.transforms import MapTransform

from common.methods.samihs.slice_input import PERCENTILES, slice_intensity_to_model
from common.methods.samus.inferer import ObjectPromptInferer
from common.methods.samus.prompts import object_prompts, read_user_prompts
from common.progress import progress

__all__ = ["PERCENTILES", "VolumePromptsd", "VolumeSlicePromptInferer", "slice_to_model"]


def slice_to_model(slice_xy: torch.Tensor, size: int, window=None, percentiles=PERCENTILES) -> torch.Tensor:
    """One slice ``(X, Y)`` -> the encoder input ``(1, 1, size, size)`` in SAM layout (rows along y), [0, 1], by
    the training pipeline's own :func:`~common.methods.samihs.slice_input.slice_intensity_to_model`."""
    return slice_intensity_to_model(slice_xy[None], size, window, percentiles).transpose(-1, -2)[None]


class VolumePromptsd(MapTransform):
    """Validate clicks and boxes against the image (``ref_key``, ``(C, X, Y, Z)``, file voxel indices) and write
    padded tensors that collate: ``points (N, 3)``, ``point_labels (N,)`` (1 / 0; -1 pads), ``point_classes (N,)``,
    ``boxes (M, 6)``, ``box_labels (M,)`` (0 pads), ``N, M >= 1``; at least one click or box is needed."""

    def __init__(self, keys: KeysCollection = "image") -> None:
        super().__init__(keys)

    def __call__(self, data):
        d = dict(data)
        ref = self.first_key(d)
        image = d[ref]
        source = str(getattr(image, "meta", {}).get("filename_or_obj", ref))
        pts, labels, classes, bxs, box_labels = read_user_prompts(d, list(image.shape[1:]), source)
        n, m = max(1, len(pts)), max(1, len(bxs))
        out = {
            "points": torch.zeros(n, 3),
            "point_labels": torch.full((n,), -1, dtype=torch.int64),
            "point_classes": torch.ones(n, dtype=torch.int64),
            "boxes": torch.zeros(m, 6),
            "box_labels": torch.zeros(m, dtype=torch.int64),
        }
        out["points"][: len(pts)] = torch.as_tensor(pts, dtype=torch.float32)
        out["point_labels"][: len(pts)] = torch.as_tensor(labels, dtype=torch.int64)
        out["point_classes"][: len(pts)] = torch.as_tensor(classes, dtype=torch.int64)
        out["boxes"][: len(bxs)] = torch.as_tensor(bxs, dtype=torch.float32)
        out["box_labels"][: len(bxs)] = torch.as_tensor(box_labels, dtype=torch.int64)
        d.update(out)
        return d


class VolumeSlicePromptInferer(Inferer):
    """``inferer(volume (1, 1, X, Y, Z), network, points, point_labels, point_classes, boxes, box_labels)`` (as
    :class:`VolumePromptsd` writes them, batch 1) -> label map ``(1, 1, X, Y, Z)`` int64; slices without a prompt
    stay 0. Per slice: :func:`slice_to_model`, then :class:`~common.methods.samus.inferer.ObjectPromptInferer`."""

    def __init__(self, image_size: int = 1024, window=None, percentiles=PERCENTILES) -> None:
        self.image_size, self.window, self.percentiles = int(image_size), window, tuple(percentiles)
        self.objects = ObjectPromptInferer()

    def __call__(self, inputs, network, points, point_labels, point_classes, boxes, box_labels):
        if inputs.ndim != 5 or inputs.shape[0] != 1:
            raise ValueError(f"VolumeSlicePromptInferer takes one volume (1, C, X, Y, Z), got {tuple(inputs.shape)}")
        _, _, sx, sy, sz = inputs.shape
        out = torch.zeros(1, 1, sx, sy, sz, dtype=torch.int64, device=inputs.device)
        valid_points = point_labels[0] >= 0
        valid_boxes = box_labels[0] > 0
        pts, bxs = points[0][valid_points].cpu().numpy(), boxes[0][valid_boxes].cpu().numpy()
        p_labels, p_classes = point_labels[0][valid_points].tolist(), point_classes[0][valid_points].tolist()
        b_labels = box_labels[0][valid_boxes].tolist()
        slices = {int(round(z)) for z in pts[:, 2]} | {z for b in bxs for z in range(int(b[2]), int(b[5]) + 1)}
        for z in progress(sorted(slices), desc="prompted slices"):
            on_z = [i for i in range(len(pts)) if int(round(pts[i, 2])) == z]
            spanning = [j for j in range(len(bxs)) if bxs[j, 2] <= z <= bxs[j, 5]]
            prompts = object_prompts(
                pts[on_z][:, :2],
                [p_labels[i] for i in on_z],
                [p_classes[i] for i in on_z],
                bxs[spanning][:, [0, 1, 3, 4]],
                [b_labels[j] for j in spanning],
                (sx, sy),
                self.image_size,
            )
            image = slice_to_model(inputs[0, 0, :, :, z], self.image_size, self.window, self.percentiles).to(
                inputs.device
            )
            batch = {k: v[None].to(inputs.device) for k, v in prompts.items()}
            out[0, 0, :, :, z] = self.objects(image, network, **batch)[0, 0].t()
        return out
