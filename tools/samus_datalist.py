"""Datalists for bundles/samus_busi: BUSI as distributed, SAMUS's own split lists, or a synthetic BUSI-layout set.

Usage:
    python tools/samus_datalist.py busi /data/BUSI bundles/samus_busi/datalist.json [--seed 0] [--include_normal]
    python tools/samus_datalist.py samus_lists /data/US30K bundles/samus_busi/datalist.json --subset Breast-BUSI
    python tools/samus_datalist.py synthetic /tmp/synthetic_busi [--per_group 8] [--seed 0]

``busi``: every benign/malignant image with its merged masks, split 70/10/20 (train/validation/test) per group
with ``numpy.random.default_rng(seed)``; the split and its seed are recorded in the file. ``samus_lists``: the
authors' ``MainPatient/{train,val,test}[-<subset>].txt`` as they are. Paths are relative to the dataset folder
(the bundle's ``dataset_dir``). The file is written atomically.
"""

from __future__ import annotations

import json
import os
import sys

import fire

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.atomic import write_text_atomic  # noqa: E402
from common.data import ultrasound  # noqa: E402
from common.data.synthetic_ultrasound import write_synthetic_busi  # noqa: E402


def _write(lists: dict, out: str, source: dict) -> str:
    counts = {k: len(v) for k, v in lists.items()}
    write_text_atomic(out, json.dumps({"source": source, **lists}, indent=4) + "\n")
    print(f"wrote {out}: {counts}")
    return out


def busi(
    dataset_dir: str,
    out: str,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    include_normal: bool = False,
) -> str:
    """BUSI folder (``Dataset_BUSI_with_GT`` or its parent) -> seeded train/validation/test datalist."""
    items = ultrasound.busi_datalist(dataset_dir, include_normal=include_normal)
    lists = ultrasound.split_datalist(items, fractions=fractions, seed=seed)
    source = {"layout": "BUSI", "seed": seed, "fractions": list(fractions), "include_normal": include_normal}
    return _write(lists, out, source)


def samus_lists(dataset_dir: str, out: str, subset: str | None = "Breast-BUSI") -> str:
    """The authors' split files (``MainPatient/{train,val,test}[-<subset>].txt``) -> datalist."""
    lists = {
        key: ultrasound.samus_list_datalist(dataset_dir, split, subset)
        for key, split in (("training", "train"), ("validation", "val"), ("test", "test"))
    }
    return _write(lists, out, {"layout": "SAMUS lists", "subset": subset})


def synthetic(out_dir: str, per_group: int = 8, seed: int = 0, height: int = 96, width: int = 128) -> str:
    """Write a seeded synthetic BUSI-layout set (see ``common.data.synthetic_ultrasound``)."""
    root = write_synthetic_busi(out_dir, per_group=per_group, size=(height, width), seed=seed)
    print(f"wrote {root}")
    return str(root)


if __name__ == "__main__":
    fire.Fire({"busi": busi, "samus_lists": samus_lists, "synthetic": synthetic})
