"""Patient-level fold datalists for SAMIHS (intracranial haemorrhage CT): PhysioNet CT-ICH (BCIHM) or INSTANCE 2022.

Usage:
    python tools/ich_datalist.py /data/ct-ich datalist_fold0.json --layout bcihm --fold 0 [--num_folds 5] [--seed 0]
    python tools/ich_datalist.py /data/instance2022/train datalist_fold0.json --layout instance --fold 0

Every axial slice of every patient, split by patient (``common.data.ich``): the test fold's patients, validation
patients carved from the other folds (``--val_fraction``, default 0.1), training = the remaining patients' slices
with haemorrhage. The file records the fold, the seed and each patient's fold; paths are relative to the dataset
folder. ``--slice_level_folds`` reproduces upstream's leaking per-slice folds (warns). Written atomically.
"""

from __future__ import annotations

import json
import os
import sys

import fire

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.atomic import write_text_atomic  # noqa: E402
from common.data import ich  # noqa: E402


def make(
    dataset_dir: str,
    out: str,
    layout: str = "bcihm",
    fold: int = 0,
    num_folds: int = 5,
    val_fraction: float = 0.1,
    seed: int = 0,
    slice_level_folds: bool = False,
    image_folder: str | None = None,
    label_folder: str | None = None,
) -> str:
    volumes = ich.volume_datalist(dataset_dir, layout, image_folder, label_folder)
    slices = ich.slice_datalist(dataset_dir, volumes)
    lists = ich.fold_datalists(slices, fold, num_folds, val_fraction, seed, slice_level_folds)
    source = {
        "layout": layout,
        "fold": fold,
        "num_folds": num_folds,
        "seed": seed,
        "slice_level_folds": slice_level_folds,
        "patient_folds": {}
        if slice_level_folds
        else ich.patient_folds([v["patient"] for v in volumes], num_folds, seed),
    }
    write_text_atomic(out, json.dumps({"source": source, **lists}, indent=4) + "\n")
    print(f"wrote {out}: " + ", ".join(f"{k} {len(v)} slices" for k, v in lists.items()))
    return out


if __name__ == "__main__":
    fire.Fire(make)
