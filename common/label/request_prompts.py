"""MONAI Label request prompts -> a bundle's ``input_dict`` prompt keys.

3D Slicer's and OHIF's MONAI Label clients send, in voxel indices ``[i, j, k]`` of the image file as
stored (the bundles' own convention, see ``common.transforms.geometry``):

- ``foreground`` / ``background``: lists of clicks ``[[i, j, k], ...]``;
- ``roi``: one box, interleaved as Slicer's ``getROIPointsXYZ`` builds it,
  ``[i_a, i_b, j_a, j_b, k_a, k_b]`` (each pair rounded from the ROI's RAS corners, so it may be reversed).

On a 2-D image (``dimension=2``: a PNG/JPEG or single ultrasound frame, which Slicer loads as one slice) clicks
may be ``[i, j]`` or ``[i, j, 0]`` and the ROI ``[i_a, i_b, j_a, j_b]`` or the 6-value form with ``k`` 0; they
become ``[x, y]`` points and ``[x0, y0, x1, y1]`` boxes.

A bundle declares which prompts it takes through the keys of its ``inference.json`` ``input_dict`` (or an explicit
``served_prompts`` list): ``boxes`` (+ ``box_labels``) are filled from ``roi``; ``points`` from the clicks
(+ ``point_labels``, 1 foreground / 0 background, when the bundle takes negative clicks). A bundle taking both
boxes and points (SAMUS) needs at least one of them per request. Nothing here imports monailabel.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from common.config_checks import finite_numbers

PROMPT_KEYS = ("boxes", "box_labels", "points", "point_labels")
#: Clicks one request may carry per key (3D Slicer and OHIF users place a handful; more is a malformed request).
MAX_CLICKS = 100


def _indices(values, key: str) -> list[int]:
    """A list of finite numbers -> rounded voxel indices; a ValueError naming ``key`` otherwise."""
    return [int(round(v)) for v in finite_numbers(values, key)]


def roi_to_box(roi, dimension: int = 3) -> list[int]:
    """Slicer/OHIF ``roi`` ``[i_a, i_b, j_a, j_b, k_a, k_b]`` -> inclusive box ``[i0, j0, k0, i1, j1, k1]``; with
    ``dimension=2`` ``[i_a, i_b, j_a, j_b]`` (or ``k`` 0) -> ``[i0, j0, i1, j1]``."""
    form = "[i0, i1, j0, j1]" if dimension == 2 else "[i0, i1, j0, j1, k0, k1]"
    if isinstance(roi, (list, tuple)) and any(isinstance(v, (list, tuple)) for v in roi):
        raise ValueError(f"'roi' must be one flat list {form}, not pairs or corners, got {list(roi)!r:.80}")
    values = _indices(roi, "roi")
    if dimension == 2 and len(values) == 6:
        if values[4:] != [0, 0]:
            raise ValueError(f"'roi' on a 2-D image must lie on slice 0 (k = 0), got {list(roi)}")
        values = values[:4]
    if len(values) != 2 * dimension:
        raise ValueError(f"'roi' must hold {2 * dimension} voxel indices {form}, got {list(roi)}")
    pairs = [sorted(values[2 * axis : 2 * axis + 2]) for axis in range(dimension)]
    return [p[0] for p in pairs] + [p[1] for p in pairs]


def _clicks(request: Mapping, key: str, dimension: int = 3) -> list[list[int]]:
    clicks = request.get(key) or []
    if isinstance(clicks, (str, bytes, Mapping)) or not isinstance(clicks, (list, tuple)):
        raise ValueError(f"'{key}' must be a list of clicks [[i, j, k], ...], got {clicks!r:.80}")
    if len(clicks) > MAX_CLICKS:
        raise ValueError(f"'{key}' holds {len(clicks)} clicks; at most {MAX_CLICKS} per request")
    out = []
    for click in clicks:
        values = _indices(click, key)
        if dimension == 2 and len(values) == 3:
            if values[2] != 0:
                raise ValueError(f"'{key}' clicks on a 2-D image must lie on slice 0 (k = 0), got {list(click)}")
            values = values[:2]
        if len(values) != dimension:
            form = "[i, j]" if dimension == 2 else "[i, j, k]"
            raise ValueError(f"each '{key}' click must be a voxel index {form}, got {list(click)}")
        out.append(values)
    return out


def request_prompts(
    request: Mapping, prompt_keys: Collection[str], model: str = "model", dimension: int = 3, optional: bool = False
) -> dict:
    """The bundle prompt entries (a subset of :data:`PROMPT_KEYS`) for one MONAI Label request on a
    ``dimension``-D image; with ``optional`` (another prompt came with the request, e.g. an uploaded mask) no click
    or box is needed.

    Raises ValueError, naming ``model`` and what it takes, when the request lacks the prompt the model needs or
    sends one it cannot use (a background click to a positive-points-only model), or a prompt that is not a list
    of finite numbers of the right length, or more than :data:`MAX_CLICKS` clicks.
    """
    prompts: dict = {}
    if optional and not (request.get("roi") or request.get("foreground") or request.get("background")):
        return prompts
    either = "boxes" in prompt_keys and "points" in prompt_keys
    foreground, background = _clicks(request, "foreground", dimension), _clicks(request, "background", dimension)
    if either and not request.get("roi") and not foreground:
        raise ValueError(f"{model} needs a foreground click ('foreground') or an ROI box ('roi'), or both")
    if "boxes" in prompt_keys and (request.get("roi") or not either):
        if not request.get("roi"):
            raise ValueError(f"{model} is box-prompted: draw an ROI box ('roi' = [i0, i1, j0, j1, k0, k1])")
        prompts["boxes"] = [roi_to_box(request["roi"], dimension)]
        if "box_labels" in prompt_keys:
            prompts["box_labels"] = [1]
    if "points" in prompt_keys and (foreground or background or not either):
        if not foreground:
            raise ValueError(f"{model} needs at least one foreground click ('foreground' = [[i, j, k], ...])")
        if background and "point_labels" not in prompt_keys:
            raise ValueError(f"{model} takes foreground clicks only; remove the {len(background)} background click(s)")
        prompts["points"] = foreground + background
        if "point_labels" in prompt_keys:
            prompts["point_labels"] = [1] * len(foreground) + [0] * len(background)
    return prompts
