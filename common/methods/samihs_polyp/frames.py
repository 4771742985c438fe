"""One video frame at a time: optional user prompts in the model frame, and the mask-prompted inferer that can carry
a clip's previous prediction forward as the next frame's prompt."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.inferers import Inferer
from monai.transforms import MapTransform

from common.errors import InvalidInputError
from common.methods.samus.prompts import USER_PROMPT_KEYS, file_frame, object_prompts, read_user_prompts

__all__ = ["FramePromptsd", "MaskPromptFrameInferer"]


class FramePromptsd(MapTransform):
    """Optional clicks/boxes of one frame (``points`` ``[[x, y], ...]``, ``point_labels``, ``boxes``
    ``[[x0, y0, x1, y1]]`` in the file's pixels) -> ``points (P, 2)``, ``point_labels (P,)`` (-1 pads; all -1 when
    none), ``box (4,)`` with ``has_box``, scaled to the ``size`` px model frame as SAMUS's rule; and ``out_size``
    ``(H, W)`` of the file. One object (polyp): at most one box. ``ref_key``: the loaded frame ``(C, X, Y)``."""

    def __init__(self, ref_key: str = "image", size: int = 1024) -> None:
        super().__init__([ref_key])
        self.ref_key, self.size = ref_key, int(size)

    def __call__(self, data):
        d = dict(data)
        shape_xy, source = file_frame(d[self.ref_key], self.ref_key)
        out = {
            "points": torch.zeros(1, 2),
            "point_labels": torch.full((1,), -1, dtype=torch.int64),
            "box": torch.zeros(4),
            "has_box": torch.tensor(False),
            "out_size": torch.tensor([shape_xy[1], shape_xy[0]]),
        }
        if d.get("points") is not None or d.get("boxes") is not None:
            pts, labels, _, bxs, _ = read_user_prompts(d, shape_xy, source)
            if len(bxs) > 1:
                raise InvalidInputError(f"{source}: one box per frame (one polyp object), got {len(bxs)}")
            obj = object_prompts(pts, labels, [1] * len(pts), bxs, [1] * len(bxs), shape_xy, self.size)
            out.update(points=obj["obj_points"][0], point_labels=obj["obj_point_labels"][0])
            out.update(box=obj["obj_boxes"][0], has_box=obj["obj_has_box"][0])
        for key in USER_PROMPT_KEYS:
            d.pop(key, None)
        d.update(out)
        return d


class MaskPromptFrameInferer(Inferer):
    """``inferer(images (B, C, S, S), network, mask_prompt (B, 1, M, M), mask_present (B,), out_size (B, 2),
    points=None, point_labels=None, box=None, has_box=None, clip=None)`` -> probabilities ``(B, 1, H, W)`` at
    ``out_size`` (SAM layout; the low-res logits resized bilinearly, then the sigmoid).

    ``mask_prompt`` are logits at the prompt encoder's ``mask_input_size``; items with ``mask_present`` False get
    ``no_mask_embed``. With ``propagate``, such an item takes its clip's previous prediction (low-res logits, which
    are at ``mask_input_size``) as the prompt: frames must arrive in order, one clip after another (batch 1).
    """

    def __init__(self, propagate: bool = False) -> None:
        self.propagate = propagate
        self._previous: dict[str, torch.Tensor] = {}

    def __call__(
        self,
        inputs: torch.Tensor,
        network,
        mask_prompt: torch.Tensor,
        mask_present: torch.Tensor,
        out_size,
        points=None,
        point_labels=None,
        box=None,
        has_box=None,
        clip=None,
    ) -> torch.Tensor:
        present = mask_present.reshape(-1).bool().clone()
        prompt = mask_prompt.float().clone()
        clips = [None] * inputs.shape[0] if clip is None else list(clip)
        if self.propagate:
            for i, name in enumerate(clips):
                if not present[i] and name in self._previous:
                    prompt[i], present[i] = self._previous[name].to(prompt), True
        has_points = point_labels is not None and bool((point_labels >= 0).any())
        boxes = box if has_box is not None and bool(has_box.all()) else None
        low_res, _ = network.decode(
            network.encode(inputs),
            point_coords=points if has_points else None,
            point_labels=point_labels if has_points else None,
            boxes=boxes,
            mask_inputs=prompt,
            mask_present=present,
        )
        if self.propagate:  # keep only the clips just seen: one clip after another needs one entry
            self._previous = {name: low_res[i].detach() for i, name in enumerate(clips) if name is not None}
        h, w = (int(v) for v in torch.as_tensor(out_size).reshape(-1)[:2])
        return torch.sigmoid(F.interpolate(low_res.float(), size=(h, w), mode="bilinear", align_corners=False))
