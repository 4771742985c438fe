"""Box-prompted slice-wise inference for 2D SAM networks on 2D images and 3D volumes.

MONAI's inferers (sliding window, slice-wise ``SliceInferer``) run a network on every patch or slice
independently; box propagation needs each slice's prompt from the previous slice's prediction, and
several boxes share image embeddings, so this inferer drives the encoder and decoder itself.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Callable

import torch
from monai.inferers import Inferer
from monai.utils import convert_to_dst_type

from common.progress import progress
from common.transforms.sam_input import SliceGeometry, to_sam_layout

logger = logging.getLogger(__name__)


class SliceEmbeddingCache:
    """Computes each slice's image embedding at most once and frees it after its last use.

    Args:
        encode: ``(1, 3, S, S) -> (1, D, He, We)`` image encoder.
        prepare: ``k -> (3, S, S)`` network input of slice ``k``.
        uses: how many times each slice index will be requested (frees the embedding after the last).
    """

    def __init__(self, encode: Callable, prepare: Callable, uses: Counter):
        self.encode, self.prepare = encode, prepare
        self.remaining = Counter(uses)
        self.store: dict[int, torch.Tensor] = {}
        self.encoder_calls = 0

    def get(self, k: int) -> torch.Tensor:
        if k not in self.store:
            self.store[k] = self.encode(self.prepare(k)[None])
            self.encoder_calls += 1
        emb = self.store[k]
        self.remaining[k] -= 1
        if self.remaining[k] <= 0:
            del self.store[k]
        return emb


def propagation_order(z0: int, z1: int) -> list[int]:
    """Slices visited for a 3D box: middle slice, up to ``z1``, then ``mid - 1`` down to ``z0`` (reference order)."""
    mid = int((z1 - z0) / 2 + z0)
    return list(range(mid, z1 + 1)) + list(range(mid - 1, z0 - 1, -1))


class BoxPropagationInferer(Inferer):
    """Segment the structures inside boxes, slice by slice along the last spatial axis.

    For each box ``[x0, y0, z0, x1, y1, z1]`` (array voxel indices, inclusive): start on the middle slice
    with the box's ``(x, y)`` extent, go up to ``z1``, then down from the middle to ``z0``; every other slice's
    prompt is the previous slice's predicted mask box plus ``box_margin`` px at network scale, or the
    original box after an empty slice (LiteMedSAM CVPR24 protocol). As in that script, the previous mask is
    resized to network scale holding a value (its box's label there), so its box keeps pixels whose resized
    coverage is >= 0.5 / value: ``mask_value="label"`` (default, faithful) uses ``box_values`` if given, else the
    box's label; a number (e.g. 1) makes the rule label-independent. ``z0 == z1`` segments one slice (a 2D box
    on a given slice); 2D images are volumes with one slice.

    Call: ``inferer(inputs, network, boxes, box_labels, box_values=None)`` with ``inputs`` ``(B, C, X, Y, Z)``
    (or ``(B, C, X, Y)``) in [0, 255] (CT-windowed), ``boxes`` ``(B, N, 6)`` (or ``(B, N, 4)`` for 2D),
    ``box_labels`` ``(B, N)``.
    ``network`` provides ``encode(images)`` and ``decode(embeddings, boxes=...)`` (``common.networks.sam.Sam``).

    Returns ``(B, 1, X, Y[, Z])`` int64 label map, or with ``output="channels"`` ``(B, num_channels, X, Y[, Z])``
    float32 scores where label ``v`` goes to channel ``v - 1``: the box's logit where its mask holds (always > 0),
    0 elsewhere, so ``> 0`` is the mask (boxes sharing a label keep the higher logit, their masks OR-ed;
    ``num_channels`` defaults to the largest label). Where the masks of boxes overlap, the label map takes the box
    with the highest logit there (``overlap="highest"``, default), or the last box (``overlap="last"``: the
    LiteMedSAM CVPR24 script, which writes boxes in order, so a later organ's mask overwrites an earlier one).

    Args:
        image_size: network input size (256 LiteMedSAM, 1024 MedSAM).
        keep_aspect_ratio: LiteMedSAM's resize-longest-side-and-pad (True) or MedSAM's stretch (False).
        box_margin: pixels added around the previous slice's mask box, at network scale.
        quantize: emulate the reference's uint8 images (truncate the windowed slice, round after resizing).
        output: ``"labels"`` or ``"channels"``.
        num_channels: channel count for ``output="channels"``.
        mask_value: ``"label"`` or a number; see above.
        overlap: ``"highest"`` or ``"last"``; see above.
        label_names: what label ``v`` is, at index ``v - 1``, for the log and progress lines (e.g. evaluation's
            ``"spleen (1), propagation"`` for a channel number); default ``"label v"``.
    """

    def __init__(
        self,
        image_size: int = 256,
        keep_aspect_ratio: bool = True,
        box_margin: int = 3,
        quantize: bool = True,
        output: str = "labels",
        num_channels: int | None = None,
        mask_value: str | float = "label",
        overlap: str = "highest",
        label_names: Sequence[str] | None = None,
    ):
        super().__init__()
        self.label_names = None if label_names is None else list(label_names)
        if output not in ("labels", "channels"):
            raise ValueError(f"output must be 'labels' or 'channels', got {output!r}")
        if overlap not in ("highest", "last"):
            raise ValueError(f"overlap must be 'highest' or 'last', got {overlap!r}")
        self.overlap = overlap
        self.image_size, self.keep_aspect_ratio = image_size, keep_aspect_ratio
        self.box_margin, self.quantize, self.output = box_margin, quantize, output
        self.num_channels = num_channels
        if mask_value != "label" and not isinstance(mask_value, (int, float)):
            raise ValueError(f"mask_value must be 'label' or a number, got {mask_value!r}")
        self.mask_value = mask_value
        self.last_encoder_calls = 0

    @torch.no_grad()
    def __call__(
        self, inputs: torch.Tensor, network, boxes, box_labels=None, box_values=None, *args, **kwargs
    ) -> torch.Tensor:
        is_2d = inputs.ndim == 4
        volume = inputs[..., None] if is_2d else inputs
        boxes = torch.as_tensor(boxes)
        if boxes.ndim == 2:
            boxes = boxes[None]
        if is_2d and boxes.shape[-1] == 4:
            boxes = torch.cat(
                [boxes[..., :2], torch.zeros_like(boxes[..., :1]), boxes[..., 2:], torch.zeros_like(boxes[..., :1])],
                dim=-1,
            )
        if box_labels is None:
            box_labels = torch.arange(1, boxes.shape[1] + 1).expand(boxes.shape[0], -1)
        box_labels = torch.as_tensor(box_labels).reshape(boxes.shape[0], -1)
        if self.mask_value != "label":
            box_values = torch.full(box_labels.shape, float(self.mask_value))
        box_values = box_labels if box_values is None else torch.as_tensor(box_values).reshape(boxes.shape[0], -1)
        results = [
            self._one_volume(volume[b], network, boxes[b], box_labels[b], box_values[b]) for b in range(volume.shape[0])
        ]
        out = torch.stack(results)
        out = out[..., 0] if is_2d else out
        # Carry the input's meta and transform trace, as a network output would, so Invertd can restore geometry.
        return convert_to_dst_type(out, inputs, dtype=out.dtype)[0]

    def _one_volume(
        self, volume: torch.Tensor, network, boxes: torch.Tensor, labels: torch.Tensor, values: torch.Tensor
    ) -> torch.Tensor:
        """``(C, X, Y, Z)`` volume -> ``(1, X, Y, Z)`` labels or ``(L, X, Y, Z)`` channels."""
        _, size_x, size_y, size_z = volume.shape
        geometry = SliceGeometry(size_y, size_x, self.image_size, self.keep_aspect_ratio, self.quantize)
        plans = [propagation_order(int(b[2]), int(b[5])) for b in boxes]
        cache = SliceEmbeddingCache(
            encode=network.encode,
            prepare=lambda k: geometry.image(to_sam_layout(volume[:, :, :, k])),
            uses=Counter(k for plan in plans for k in plan),
        )
        if self.output == "labels":
            out = torch.zeros((1, size_x, size_y, size_z), dtype=torch.int64, device=volume.device)
            best = torch.full((size_x, size_y, size_z), -torch.inf, device=volume.device)  # logit of the label kept
        else:
            channels = self.num_channels or int(labels.max())
            out = torch.zeros((channels, size_x, size_y, size_z), dtype=torch.float32, device=volume.device)
        for i, (box, plan) in enumerate(zip(boxes.tolist(), plans)):
            what = f"box {i + 1}/{len(plans)} ({self._label_name(int(labels[i]))})"
            logger.info(f"{what}: slices {box[2]}-{box[5]}")
            scores = self._propagate(box, plan, geometry, cache, network, size_z, float(values[i]), what)
            scores = scores.to(out.device)
            mask = scores > 0
            if self.output == "channels":
                channel = out[int(labels[i]) - 1]
                channel[mask] = torch.maximum(channel[mask], scores[mask])
                continue
            if self.overlap == "highest":
                mask &= scores > best
                best[mask] = scores[mask]
            out[0][mask] = int(labels[i])
        self.last_encoder_calls = cache.encoder_calls
        return out

    def _label_name(self, label: int) -> str:
        if self.label_names is not None and 1 <= label <= len(self.label_names):
            return self.label_names[label - 1]
        return f"label {label}"

    def _propagate(
        self,
        box,
        plan,
        geometry: SliceGeometry,
        cache: SliceEmbeddingCache,
        network,
        size_z: int,
        mask_value: float,
        what: str = "box",
    ) -> torch.Tensor:
        """One box along its slices -> ``(X, Y, Z)`` float32 scores: the logit where the mask holds, else 0
        (``what`` names the box in the progress bar)."""
        original = geometry.box_to_model([box[0], box[1], box[3], box[4]])
        mid = plan[0]
        scores = torch.zeros((geometry.width, geometry.height, size_z), dtype=torch.float32)
        for k in progress(plan, desc=f"{what} slices"):
            prompt = original
            if k != mid:
                neighbour = k - 1 if k > mid else k + 1
                from_mask = geometry.mask_to_model_box(
                    to_sam_layout(scores[:, :, neighbour] > 0), self.box_margin, mask_value
                )
                prompt = original if from_mask is None else from_mask
            embedding = cache.get(k)
            low_res, _ = network.decode(embedding, boxes=prompt.to(embedding.device)[None, None])
            logits = to_sam_layout(geometry.logits_to_image(low_res[0, 0])).cpu()
            scores[:, :, k] = logits.clamp(min=0)
        return scores
