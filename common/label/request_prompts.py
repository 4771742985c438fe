"""MONAI Label request prompts -> a bundle's ``input_dict`` prompt keys.

3D Slicer's and OHIF's MONAI Label clients send, in voxel indices ``[i, j, k]`` of the image file as
stored (the bundles' own convention, see ``common.transforms.geometry``):

- ``foreground`` / ``background``: lists of clicks ``[[i, j, k], ...]``;
- ``roi``: one box, interleaved as Slicer's ``getROIPointsXYZ`` builds it,
  ``[i_a, i_b, j_a, j_b, k_a, k_b]`` (each pair rounded from the ROI's RAS corners, so it may be reversed).

A bundle declares which prompts it takes through the keys of its ``inference.json`` ``input_dict``:
``boxes`` (+ ``box_labels``) are filled from ``roi``; ``points`` from the clicks (+ ``point_labels``,
1 foreground / 0 background, when the bundle takes negative clicks). Nothing here imports monailabel.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

PROMPT_KEYS = ("boxes", "box_labels", "points", "point_labels")


def roi_to_box(roi) -> list[int]:
    """Slicer/OHIF ``roi`` ``[i_a, i_b, j_a, j_b, k_a, k_b]`` -> inclusive box ``[i0, j0, k0, i1, j1, k1]``."""
    values = [int(round(float(v))) for v in roi]
    if len(values) != 6:
        raise ValueError(f"'roi' must hold 6 voxel indices [i0, i1, j0, j1, k0, k1], got {list(roi)}")
    pairs = [sorted(values[2 * axis : 2 * axis + 2]) for axis in range(3)]
    return [p[0] for p in pairs] + [p[1] for p in pairs]


def _clicks(request: Mapping, key: str) -> list[list[int]]:
    clicks = request.get(key) or []
    out = []
    for click in clicks:
        if len(click) != 3:
            raise ValueError(f"each '{key}' click must be a voxel index [i, j, k], got {list(click)}")
        out.append([int(round(float(v))) for v in click])
    return out


def request_prompts(request: Mapping, prompt_keys: Collection[str], model: str = "model") -> dict:
    """The bundle prompt entries (a subset of :data:`PROMPT_KEYS`) for one MONAI Label request.

    Raises ValueError, naming ``model`` and what it takes, when the request lacks the prompt the model needs or
    sends one it cannot use (a background click to a positive-points-only model).
    """
    prompts: dict = {}
    if "boxes" in prompt_keys:
        if not request.get("roi"):
            raise ValueError(f"{model} is box-prompted: draw an ROI box ('roi' = [i0, i1, j0, j1, k0, k1])")
        prompts["boxes"] = [roi_to_box(request["roi"])]
        if "box_labels" in prompt_keys:
            prompts["box_labels"] = [1]
    if "points" in prompt_keys:
        foreground, background = _clicks(request, "foreground"), _clicks(request, "background")
        if not foreground:
            raise ValueError(f"{model} needs at least one foreground click ('foreground' = [[i, j, k], ...])")
        if background and "point_labels" not in prompt_keys:
            raise ValueError(f"{model} takes foreground clicks only; remove the {len(background)} background click(s)")
        prompts["points"] = foreground + background
        if "point_labels" in prompt_keys:
            prompts["point_labels"] = [1] * len(foreground) + [0] * len(background)
    return prompts
