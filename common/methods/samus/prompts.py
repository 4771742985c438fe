"""SAMUS's prompts: clicks and boxes sampled from a label for training/evaluation, and user prompts for inference.

Coordinates are ``(x, y)`` pixel indices of the item's current frame (after :class:`~common.methods.samus.frames.
ResizeFramed`: the 256 px model frame), SAM's order. Upstream rules (spec 1.10):

* training (``mode="random"``): one uniformly random foreground pixel, label 1; when the class is absent, a random
  background pixel with label 0. Box: the tight box with upstream's ``random_bbox`` jitter (width/height x
  U(0.95, 1.05), centre +-5 % of the size), which upstream computes and never feeds.
* evaluation (``mode="fixed"``): the middle element of the foreground pixels in raster order (rows, then columns:
  ``np.argwhere`` on the row-major image), label 1; the tight box.

Which prompts reach the network is the config's ``prompt`` choice (:data:`PROMPTS`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable

from common.errors import InvalidInputError
from common.transforms.geometry import validate_boxes, validate_points

__all__ = ["PROMPTS", "LabelPromptsd", "UserPromptsd", "object_prompts", "prompt_keys", "read_user_prompts"]

#: ``"click"``: one click (published); ``"box"``: the box alone; ``"click_and_box"``: both.
PROMPTS = ("click", "box", "click_and_box")


#: The user prompt entries of an input item (file pixel indices), consumed by the prompt transforms.
USER_PROMPT_KEYS = ("points", "point_labels", "point_classes", "boxes", "box_labels")


def prompt_keys(prompt: str) -> dict[str, str]:
    """The network's keyword inputs for a ``prompt`` choice, as ``PrepareBatchExtraInput`` ``extra_keys``."""
    if prompt not in PROMPTS:
        raise ValueError(f"prompt must be one of {PROMPTS}, got {prompt!r}")
    keys: dict[str, str] = {}
    if prompt != "box":
        keys.update(point_coords="point_coords", point_labels="point_labels")
    if prompt != "click":
        keys["boxes"] = "boxes"
    return keys


class LabelPromptsd(Randomizable, MapTransform):
    """From a binary ``label`` ``(1, X, Y)``: ``point_coords (1, 2)`` float, ``point_labels (1,)`` int64 and
    ``boxes (4,)`` float ``[x0, y0, x1, y1]`` (rules in the module docstring). ``mode``: ``"random"`` or ``"fixed"``.

    Without a foreground: ``empty_click="background"`` gives a background click with label 0 (SAMUS and SAMIHS as
    published; addendum 3.3 item 8: for SAMIHS a GT-derived prompt whose embedding never trained), ``"none"`` a
    padding point (label -1: SAM's "not a point" token, no information from the label); a box is the whole frame
    (``empty_box="frame"``) or an error. ``coord_scale`` multiplies the coordinates (SAMIHS samples on its 512 px
    mask and scales by 1024 / 512 for the encoder frame)."""

    def __init__(
        self,
        label_key: str = "label",
        mode: str = "random",
        empty_box: str = "frame",
        empty_click: str = "background",
        coord_scale: float = 1.0,
    ) -> None:
        MapTransform.__init__(self, [label_key])
        if mode not in ("random", "fixed"):
            raise ValueError(f"mode must be 'random' or 'fixed', got {mode!r}")
        if empty_box not in ("frame", "error"):
            raise ValueError(f"empty_box must be 'frame' or 'error', got {empty_box!r}")
        if empty_click not in ("background", "none"):
            raise ValueError(f"empty_click must be 'background' or 'none', got {empty_click!r}")
        self.label_key, self.mode, self.empty_box, self.empty_click = label_key, mode, empty_box, empty_click
        self.coord_scale = float(coord_scale)

    def _click(self, fg_yx: np.ndarray, bg_yx: np.ndarray) -> tuple[list[float], int]:
        if not len(fg_yx) and self.empty_click == "none":
            return [0.0, 0.0], -1
        pixels, label = (fg_yx, 1) if len(fg_yx) else (bg_yx, 0)
        i = self.R.randint(len(pixels)) if self.mode == "random" else len(pixels) // 2
        y, x = pixels[i]
        return [float(x), float(y)], label

    def _box(self, fg_yx: np.ndarray, shape_xy: Sequence[int]) -> list[float]:
        if not len(fg_yx):
            if self.empty_box == "error":
                raise InvalidInputError(f"'{self.label_key}': a box prompt needs a foreground, the mask is empty")
            return [0.0, 0.0, float(shape_xy[0] - 1), float(shape_xy[1] - 1)]
        (y0, x0), (y1, x1) = fg_yx.min(0), fg_yx.max(0)
        if self.mode == "fixed":
            return [float(x0), float(y0), float(x1), float(y1)]
        w, h = (x1 - x0) * self.R.uniform(0.95, 1.05), (y1 - y0) * self.R.uniform(0.95, 1.05)
        cx = (x0 + x1) / 2 + (x1 - x0) * self.R.uniform(-0.05, 0.05)
        cy = (y0 + y1) / 2 + (y1 - y0) * self.R.uniform(-0.05, 0.05)
        box = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        return np.clip(box, 0, [shape_xy[0] - 1, shape_xy[1] - 1] * 2).tolist()

    def __call__(self, data):
        d = dict(data)
        label = np.asarray(d[self.label_key])[0] > 0  # (X, Y)
        rows = label.T  # (Y, X): raster order is rows first
        fg, bg = np.argwhere(rows), np.argwhere(~rows)
        click, click_label = self._click(fg, bg)
        d["point_coords"] = torch.tensor([click], dtype=torch.float32) * self.coord_scale
        d["point_labels"] = torch.tensor([click_label], dtype=torch.int64)
        d["boxes"] = torch.tensor(self._box(fg, label.shape), dtype=torch.float32) * self.coord_scale
        return d


def _group_objects(point_classes: list[int], box_labels: list[int]) -> list[tuple[int, list[int], int | None]]:
    """Objects as ``(label, click indices, box index or None)``: one per box; each click joins the box of its class
    when exactly one box has that class, else the click-only object of its class (made on first use)."""
    objects: list[tuple[int, list[int], int | None]] = [(label, [], i) for i, label in enumerate(box_labels)]
    for i, cls in enumerate(point_classes):
        boxes = [o for o in objects if o[0] == cls and o[2] is not None]
        clicks_only = [o for o in objects if o[0] == cls and o[2] is None]
        target = boxes[0] if len(boxes) == 1 else (clicks_only[0] if clicks_only else None)
        if target is None:
            target = (cls, [], None)
            objects.append(target)
        target[1].append(i)
    return objects


def _ints(d: Mapping, key: str, n: int, default: int) -> list[int]:
    values = d.get(key)
    values = [default] * n if values is None else [int(v) for v in np.asarray(values).reshape(-1)]
    if len(values) != n:
        raise InvalidInputError(f"'{key}': {len(values)} value(s) for {n} prompt(s)")
    return values


def read_user_prompts(
    d: Mapping, shape: Sequence[int], source: str
) -> tuple[np.ndarray, list[int], list[int], np.ndarray, list[int]]:
    """Validated ``points`` ``(N, D)``, ``point_labels`` (1 / 0), ``point_classes``, ``boxes`` ``(M, 2 D)`` (float)
    and ``box_labels`` (output labels 1..255) of an item, against an image of ``shape`` (file pixel/voxel indices,
    ``D = len(shape)``); the optional keys default to 1. At least one click or box is needed."""
    form = "[[x, y], ...]" if len(shape) == 2 else "[[x, y, z], ...]"
    if d.get("points") is None and d.get("boxes") is None:
        raise InvalidInputError(f"{source}: no prompt; give 'points' ({form}) and/or 'boxes'")
    dim = len(shape)
    pts = np.zeros((0, dim)) if d.get("points") is None else validate_points(d["points"], shape, source, "points")
    raw_boxes = d.get("boxes")
    bxs = np.zeros((0, 2 * dim)) if raw_boxes is None else validate_boxes(raw_boxes, shape, source, "boxes")
    p_labels = _ints(d, "point_labels", len(pts), 1)
    if any(v not in (0, 1) for v in p_labels):
        raise InvalidInputError(f"'point_labels' must be 1 (positive) or 0 (negative), got {p_labels}")
    p_classes, b_labels = _ints(d, "point_classes", len(pts), 1), _ints(d, "box_labels", len(bxs), 1)
    if any(v < 1 or v > 255 for v in p_classes + b_labels):
        raise InvalidInputError(f"output labels must be 1..255, got {sorted(set(p_classes + b_labels))}")
    return pts, p_labels, p_classes, bxs.astype(float), b_labels


def object_prompts(
    points: np.ndarray,
    point_labels: list[int],
    point_classes: list[int],
    boxes: np.ndarray,
    box_labels: list[int],
    shape_xy: Sequence[int],
    size: int,
) -> dict[str, torch.Tensor]:
    """Validated prompts of one ``(X, Y)`` frame (``points (N, 2)``, ``boxes (M, 4)`` in its pixels) -> the object
    tensors of :class:`UserPromptsd` (``obj_*`` and ``out_size``) in the ``size`` px model frame."""
    objects = _group_objects(point_classes, box_labels)
    scale = np.array([size / shape_xy[0], size / shape_xy[1]])

    def to_model(xy: np.ndarray) -> torch.Tensor:  # pixel centres to pixel centres of the stretched frame
        return torch.as_tensor((xy + 0.5) * scale - 0.5, dtype=torch.float32)

    n_obj, n_pts = len(objects), max([1] + [len(o[1]) for o in objects])
    obj_points = torch.zeros(n_obj, n_pts, 2)
    obj_point_labels = torch.full((n_obj, n_pts), -1, dtype=torch.int64)
    obj_boxes = torch.zeros(n_obj, 4)
    obj_has_box = torch.zeros(n_obj, dtype=torch.bool)
    for k, (_, clicks, box) in enumerate(objects):
        for j, i in enumerate(clicks):
            obj_points[k, j] = to_model(points[i])
            obj_point_labels[k, j] = point_labels[i]
        if box is not None:
            obj_boxes[k] = to_model(boxes[box].reshape(2, 2)).reshape(4)
            obj_has_box[k] = True
    return dict(
        obj_points=obj_points,
        obj_point_labels=obj_point_labels,
        obj_boxes=obj_boxes,
        obj_has_box=obj_has_box,
        obj_labels=torch.tensor([o[0] for o in objects], dtype=torch.int64),
        out_size=torch.tensor([shape_xy[1], shape_xy[0]]),
    )


class UserPromptsd(MapTransform):
    """User prompts in pixel indices ``(x, y)`` of the file as a viewer shows it -> one prompt per object.

    Inputs (each optional, at least one of points and boxes): ``points`` ``[[x, y], ...]``, ``point_labels``
    (1 positive, 0 negative; default all 1), ``point_classes`` (output label per click; default 1), ``boxes``
    ``[[x0, y0, x1, y1], ...]`` (inclusive), ``box_labels`` (output label per box; default 1). Each box is one
    object; clicks join the box of their class when exactly one box has it, otherwise the clicks of one class form
    one object. So one prompt per class gives one binary mask per class, and the inferer makes the label map.

    Writes, in the ``size`` px model frame (square stretch, as the image; a pixel centre maps to the same place,
    ``(x + 0.5) * size / X - 0.5``, so a click lands where the viewer showed it): ``obj_points (K, P, 2)`` with
    ``obj_point_labels (K, P)`` (-1 pads), ``obj_boxes (K, 4)`` with ``obj_has_box (K,)``, ``obj_labels (K,)``, and
    ``out_size`` ``(H, W)`` of the file (the inferer's output size); the raw prompt keys are removed.
    ``ref_key``: the loaded image, whose ``meta["spatial_shape"]`` is the file's ``(X, Y)``.
    """

    def __init__(self, ref_key: str = "image", size: int = 256) -> None:
        super().__init__([ref_key])
        self.ref_key, self.size = ref_key, int(size)

    def __call__(self, data):
        d = dict(data)
        shape_xy, source = file_frame(d[self.ref_key], self.ref_key)
        pts, p_labels, p_classes, bxs, b_labels = read_user_prompts(d, shape_xy, source)
        d.update(object_prompts(pts, p_labels, p_classes, bxs, b_labels, shape_xy, self.size))
        for key in USER_PROMPT_KEYS:
            d.pop(key, None)  # consumed: the raw lists would not collate
        return d


def file_frame(image, name: str) -> tuple[list[int], str]:
    """The file's ``(X, Y)`` (``meta["spatial_shape"]``, else the array's) and its name (for messages) of a loaded
    ``(C, X, Y)`` frame."""
    meta = getattr(image, "meta", {})
    shape_xy = [int(s) for s in np.asarray(meta.get("spatial_shape", image.shape[1:]))[:2]]
    return shape_xy, str(meta.get("filename_or_obj", name))
