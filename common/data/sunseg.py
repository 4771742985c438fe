"""SUN-SEG video polyp datalists (addendum 4.3): ``<split>/Frame/<clip>/*.jpg`` with ``<split>/GT/<clip>/*.png``,
and the external network's probability maps ``<maps>/<clip>/<frame>.png`` (PNS+'s ``my_test.py`` writes that tree).

Items: ``{"image": <split>/Frame/<clip>/<name>.jpg, "label": <split>/GT/<clip>/<name>.png, "clip", "frame",
"mask_prompt": <maps>/<clip>/<name>.png}`` (absolute paths; the tree is the datalist), frames in each clip in the
toolbox's order (:func:`frame_sort_key`, as ``eval/vps_evaluator.py`` sorts). SUN-SEG may not be redistributed:
tests use synthetic trees with the same layout.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from common.errors import InputNotFoundError, InvalidInputError

__all__ = [
    "FRAME_SUFFIXES",
    "MAP_SOURCES",
    "clip_split",
    "frame_sort_key",
    "inference_datalist",
    "sunseg_datalist",
    "training_clips",
]

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")


def frame_sort_key(name: str | os.PathLike) -> tuple[int, ...]:
    """Sort key of a clip's frame file (name or path): ``(n,)`` for ``<n>.png``, else ``(k, n)`` for SUN-SEG names
    ``..._a<k>_..._image<n>.png`` (segment, then frame; numeric, so ``image9`` < ``image10`` and ``a9`` < ``a10``).

    The toolbox's key also holds the clip folder's number, which is constant within a clip.
    """
    base = os.path.basename(os.fspath(name))
    stem = base[: -len(".png")] if base.endswith(".png") else os.path.splitext(base)[0]
    try:
        return (int(stem),)
    except ValueError:
        pass
    try:
        return int(stem.split("_a")[1].split("_")[0]), int(stem.split("_image")[1])
    except (IndexError, ValueError):
        raise ValueError(f"cannot order frame {base!r}: expected '<n>.png' or '..._a<k>_..._image<n>.png'") from None


def _frame_order(name: str) -> tuple:
    """:func:`frame_sort_key` where it applies (SUN-SEG names, numbered frames), else by name after them."""
    try:
        return (0, frame_sort_key(name), "")
    except ValueError:
        return (1, (), name)


def _frames(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES), key=lambda p: _frame_order(p.name)
    )


def sunseg_datalist(
    split_dir: str,
    maps_dir: str | None = None,
    frame_folder: str = "Frame",
    gt_folder: str = "GT",
    require_labels: bool = True,
    require_maps: bool = False,
) -> list[dict]:
    """Every frame of every clip of one split folder (e.g. ``SUN-SEG/TestEasyDataset/Unseen``), as items above.

    ``maps_dir``: the external maps' tree; a frame without a map gets no ``mask_prompt`` (the bundle then uses no
    mask, or the previous frame's prediction), unless ``require_maps``. ``require_labels``: every frame needs its
    GT mask (training, evaluation); otherwise ``label`` is left out where absent.
    """
    root = Path(split_dir)
    frames_root = root / frame_folder
    if not frames_root.is_dir():
        raise InputNotFoundError(f"SUN-SEG layout: frame folder not found: {frames_root}")
    maps_root = None if maps_dir is None else Path(maps_dir)
    if maps_root is not None and not maps_root.is_dir():
        raise InputNotFoundError(f"maps folder not found: {maps_root}")
    items, missing_labels, missing_maps = [], [], []
    for clip in sorted(p for p in frames_root.iterdir() if p.is_dir()):
        for frame in _frames(clip):
            item = {"image": str(frame.resolve()), "clip": clip.name, "frame": frame.stem}
            label = root / gt_folder / clip.name / f"{frame.stem}.png"
            if label.is_file():
                item["label"] = str(label.resolve())
            elif require_labels:
                missing_labels.append(str(label))
            if maps_root is not None:
                prompt = maps_root / clip.name / f"{frame.stem}.png"
                if prompt.is_file():
                    item["mask_prompt"] = str(prompt.resolve())
                else:
                    missing_maps.append(str(prompt))
            items.append(item)
    if not items:
        raise InvalidInputError(f"{frames_root}: no clip folders with frames ({', '.join(FRAME_SUFFIXES)})")
    for what, missing in (("GT masks", missing_labels), ("maps", missing_maps if require_maps else [])):
        if missing:
            raise InputNotFoundError(f"{len(missing)} frame(s) without {what}, e.g. {missing[:3]}")
    return items


#: Where the training prompts come from: the external network's maps (``maps_dir``), or the GT masks (perturbed).
MAP_SOURCES = ("external", "ground_truth")


def clip_split(items: list[dict], val_fraction: float = 0.1, seed: int = 0) -> dict[str, list[dict]]:
    """``{"training", "validation"}`` by whole clips (a clip's frames are near-duplicates: never split one), at
    least one clip each; seeded."""
    clips = sorted({item["clip"] for item in items})
    if len(clips) < 2:
        raise InvalidInputError(f"need at least 2 clips to carve a validation set, got {len(clips)}")
    order = np.random.default_rng(seed).permutation(len(clips))
    n_val = min(len(clips) - 1, max(1, round(val_fraction * len(clips))))
    val = {clips[i] for i in order[:n_val]}
    return {
        "training": [item for item in items if item["clip"] not in val],
        "validation": [item for item in items if item["clip"] in val],
    }


def training_clips(
    split_dir: str, maps_dir: str | None, map_source: str, val_fraction: float = 0.1, seed: int = 0
) -> dict[str, list[dict]]:
    """The training split folder -> :func:`clip_split` of its frames; ``map_source`` (:data:`MAP_SOURCES`)
    ``"external"`` needs a map for every frame."""
    if map_source not in MAP_SOURCES:
        raise InvalidInputError(f"map_source must be one of {MAP_SOURCES}, got {map_source!r}")
    if map_source == "external" and maps_dir is None:
        raise InvalidInputError("map_source 'external' needs maps_dir (the external network's maps)")
    items = sunseg_datalist(split_dir, maps_dir if map_source == "external" else None, require_maps=True)
    return clip_split(items, val_fraction, seed)


def inference_datalist(
    split_dir: str | None, maps_dir: str | None = None, video: str | None = None, input_dict: dict | None = None
) -> list[dict]:
    """What the polyp bundle segments: one frame (``input_dict``: ``image``, optional ``mask_prompt``, clicks,
    boxes; written to the output folder itself), the frames of a ``video`` file, or every clip of a SUN-SEG split
    folder (``split_dir``, GT not needed); ``maps_dir`` holds the external maps of the latter two."""
    if input_dict:
        if "image" not in input_dict:
            raise InvalidInputError("input_dict needs 'image' (a frame file)")
        return [{"clip": "", "frame": Path(str(input_dict["image"])).stem, **input_dict}]
    if video:
        from common.data.video import video_datalist

        return video_datalist(video, maps_dir)
    if not split_dir:
        raise InvalidInputError("give dataset_dir (a SUN-SEG split folder), video, or input_dict")
    return sunseg_datalist(split_dir, maps_dir, require_labels=False)
