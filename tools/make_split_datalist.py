"""Write a Decathlon-style datalist JSON for a 3DSAM-adapter fold from its published split.

Usage:
    python tools/make_split_datalist.py pancreas bundles/3dsam_pancreas/configs/datalist_fold0.json

The split file (``{dataset: {"train"|"val"|"test": {case_id: [img_rel, seg_rel]}}}``, extracted from upstream's
``datafile/*/split.pkl``) names cases by id; its paths follow the authors' re-arranged folders. The datalist
points at the Medical Segmentation Decathlon layout instead (``imagesTr/<case>.nii.gz``,
``labelsTr/<case>.nii.gz``, relative to the dataset folder), so it works with the MSD download as is. Lists are
sorted by case id and the file is written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import fire

from common.atomic import write_text_atomic

DEFAULT_SPLITS = str(Path(__file__).resolve().parents[2] / "shared" / "specs" / "3dsam_splits_fold0.json")
MSD_DATASETS = ("pancreas", "colon")
LIST_KEYS = {"train": "training", "val": "validation", "test": "test"}


def split_datalist(splits: dict, dataset: str) -> dict[str, list[dict[str, str]]]:
    """``{"training"|"validation"|"test": [{"image": "imagesTr/<case>.nii.gz", "label": "labelsTr/..."}]}``."""
    if dataset not in MSD_DATASETS:
        raise ValueError(
            f"dataset {dataset!r} is not supported: only the MSD-layout datasets {MSD_DATASETS} map to "
            f"imagesTr/labelsTr (kits and lits use their own folder layouts)."
        )
    if dataset not in splits:
        raise KeyError(f"the split file has no dataset {dataset!r} (found {sorted(splits)}).")
    missing = [part for part in LIST_KEYS if part not in splits[dataset]]
    if missing:
        raise KeyError(
            f"the split of {dataset!r} lacks {missing} (expected {list(LIST_KEYS)}, found {sorted(splits[dataset])})."
        )
    seen: dict[str, str] = {}
    for part in LIST_KEYS:
        for case in splits[dataset][part]:
            if seen.setdefault(case, part) != part:
                raise ValueError(f"case {case!r} of {dataset!r} is in both {seen[case]!r} and {part!r}.")
    return {
        key: [
            {"image": f"imagesTr/{case}.nii.gz", "label": f"labelsTr/{case}.nii.gz"}
            for case in sorted(splits[dataset][part])
        ]
        for part, key in LIST_KEYS.items()
    }


def datalist_text(dataset: str, splits: str = DEFAULT_SPLITS) -> str:
    """The JSON text written for ``dataset`` from the split file ``splits``."""
    with open(splits) as f:
        return json.dumps(split_datalist(json.load(f), dataset), indent=4) + "\n"


def main(dataset: str, out: str, splits: str = DEFAULT_SPLITS) -> str:
    """Write the datalist of ``dataset`` (pancreas or colon) from ``splits`` to ``out``; returns ``out``."""
    text = datalist_text(dataset, splits)
    write_text_atomic(out, text)
    counts = {key: len(items) for key, items in json.loads(text).items()}
    print(f"wrote {out}: {counts}")
    return out


if __name__ == "__main__":
    fire.Fire(main)
