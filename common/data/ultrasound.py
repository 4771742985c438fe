"""Datalists for breast-ultrasound segmentation: BUSI as distributed, and SAMUS's own list format.

Entries are ``{"image": path, "label": path or [paths], "class_id": int, "group": str}`` with paths relative
to the dataset root (the bundles' ``dataset_dir``).

* **BUSI** (Al-Dhabyani et al., 2020; ``Dataset_BUSI_with_GT/{benign,malignant,normal}/<name>.png`` with
  ``<name>_mask.png`` and sometimes ``<name>_mask_1.png`` ...): the masks of one image are merged when loaded
  (:func:`common.transforms.ultrasound.read_mask`). ``normal`` images have empty masks: a prompted model has no
  object to segment there (SAMUS's BUSI lists hold benign and malignant only), so they are left out unless
  ``include_normal`` (then their one click is a background click, label 0, as upstream does for an absent class).
* **SAMUS lists** (``<root>/MainPatient/{train,val,test}[-<SubDataset>].txt``, ``MainPatient/class.json``,
  ``<root>/<SubDataset>/{img,label}/<name>.png``): train/val lines ``<class_id>/<SubDataset>/<name>``, test lines
  ``<SubDataset>/<name>`` (class 1). ``class.json`` gives the classes per sub-dataset including background; with
  2 classes the mask is binary (any non-zero pixel), otherwise the line's class id selects its pixels.

:func:`split_datalist` makes a seeded train/validation/test split, stratified by ``group``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.errors import InputNotFoundError, InvalidInputError

__all__ = ["BUSI_GROUPS", "busi_datalist", "samus_list_classes", "samus_list_datalist", "split_datalist"]

BUSI_GROUPS = ("benign", "malignant", "normal")
_MASK = re.compile(r"^(?P<stem>.+)_mask(_\d+)?$")


def _busi_root(root: Path) -> Path:
    for candidate in (root, root / "Dataset_BUSI_with_GT"):
        if all((candidate / g).is_dir() for g in BUSI_GROUPS[:2]):
            return candidate
    raise InputNotFoundError(
        f"no BUSI folders under {root}: expected benign/ and malignant/ (and normal/) there or in "
        f"{root / 'Dataset_BUSI_with_GT'}"
    )


def busi_datalist(root: str, include_normal: bool = False) -> list[dict]:
    """BUSI images and their (merged) masks, sorted by group then name; see the module docstring."""
    base = Path(root)
    busi = _busi_root(base)
    groups = BUSI_GROUPS if include_normal else BUSI_GROUPS[:2]
    items = []
    for group in groups:
        folder = busi / group
        if not folder.is_dir():
            continue
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))
        masks: dict[str, list[Path]] = {}
        images = []
        for p in files:
            m = _MASK.match(p.stem)
            if m:
                masks.setdefault(m.group("stem"), []).append(p)
            else:
                images.append(p)
        orphans = sorted(set(masks) - {p.stem for p in images})
        if orphans:
            raise InvalidInputError(f"{folder}: masks without an image: {orphans[:5]}")
        for image in images:
            if image.stem not in masks:
                raise InvalidInputError(f"{image}: no mask ({image.stem}_mask.png) beside it")
            items.append(
                {
                    "image": str(image.relative_to(base)),
                    "label": [str(m.relative_to(base)) for m in sorted(masks[image.stem])],
                    "class_id": 1,
                    "group": group,
                }
            )
    if not items:
        raise InvalidInputError(f"no BUSI images found under {busi}")
    return items


def samus_list_classes(root: str) -> dict[str, int]:
    """``MainPatient/class.json``: classes (including background) per sub-dataset."""
    path = Path(root) / "MainPatient" / "class.json"
    if not path.is_file():
        raise InputNotFoundError(f"SAMUS list layout needs {path} (classes per sub-dataset)")
    with open(path) as f:
        return {str(k): int(v) for k, v in json.load(f).items()}


def samus_list_datalist(root: str, split: str = "train", subset: str | None = None) -> list[dict]:
    """Entries of ``MainPatient/<split>[-<subset>].txt``; ``binary`` is set from ``class.json``."""
    base = Path(root)
    name = f"{split}-{subset}.txt" if subset else f"{split}.txt"
    path = base / "MainPatient" / name
    if not path.is_file():
        raise InputNotFoundError(f"SAMUS list not found: {path}")
    classes = samus_list_classes(root)
    items = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        parts = line.split("/")
        if len(parts) == 3 and parts[0].isdigit():
            class_id, sub, stem = int(parts[0]), parts[1], parts[2]
        elif len(parts) == 2:
            class_id, sub, stem = 1, parts[0], parts[1]
        else:
            raise InvalidInputError(f"{path}:{n}: expected '<class_id>/<SubDataset>/<name>' or '<SubDataset>/<name>'")
        if sub not in classes:
            raise InvalidInputError(f"{path}:{n}: sub-dataset {sub!r} is not in class.json ({sorted(classes)})")
        image, label = base / sub / "img" / f"{stem}.png", base / sub / "label" / f"{stem}.png"
        for p in (image, label):
            if not p.is_file():
                raise InputNotFoundError(f"{path}:{n}: {p} not found")
        items.append(
            {
                "image": str(image.relative_to(base)),
                "label": str(label.relative_to(base)),
                "class_id": class_id,
                "binary": classes[sub] == 2,
                "group": sub,
            }
        )
    if not items:
        raise InvalidInputError(f"{path} lists no images")
    return items


def split_datalist(
    items: Sequence[dict], fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0
) -> dict[str, list[dict]]:
    """Seeded split into ``training`` / ``validation`` / ``test``, stratified by ``group`` (each group is
    shuffled with ``numpy.random.default_rng(seed)`` and cut by ``fractions``, rounded down; the rest goes to
    test). Every item lands in exactly one list."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise InvalidInputError(f"fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    rng = np.random.default_rng(seed)
    out: dict[str, list[dict]] = {"training": [], "validation": [], "test": []}
    for group in sorted({str(i.get("group", "")) for i in items}):
        members = [i for i in items if str(i.get("group", "")) == group]
        order = rng.permutation(len(members))
        n_train, n_val = int(fractions[0] * len(members)), int(fractions[1] * len(members))
        for rank, idx in enumerate(order):
            key = "training" if rank < n_train else "validation" if rank < n_train + n_val else "test"
            out[key].append(members[idx])
    return out
