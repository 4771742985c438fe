"""Model-zoo style unit tests of the medsam bundle (``ci/unit_tests/test_medsam.py`` in a model-zoo checkout or in
the bundle's zip): training, evaluation and inference run through MONAI's ``ConfigWorkflow`` on the bundle's own
configs (LiteMedSAM, its only network size) on a seeded synthetic CT data set (48x48x12 int16 volumes at 3 mm with
two bright organs of the evaluated labels: spleen 1, liver 5). They prove that every config initialises, passes
``check_properties()``, runs and writes what it promises: ``model.pt`` in ``ckpt_dir``, ``metrics.json``/``metrics.csv``
with finite Dice, a label map on the input's grid that segments the boxed organ.

Plain ``unittest``; the code is reached only through the configs (no import of the shared library, which the zip
vendors under another name). The bundle folder is ``$BUNDLE_ROOT``, else ``models/medsam`` (model-zoo layout, run
from the model-zoo root), else the folder two levels above this file (``<bundle>/ci/unit_tests/``), else
``bundles/medsam`` of the repository two levels above this file.

Weights: the LiteMedSAM ``model.pt`` is ``$MEDSAM_WEIGHTS`` when set (passed as the ``ckpt_path`` and
``pretrained_path`` overrides), else the bundle's ``models/model.pt`` (a large file: model-zoo CI downloads it first,
``python -m monai.bundle download_large_files --bundle_path <bundle>``). Without it the evaluation and inference
tests are skipped and training starts from random weights (``load_pretrain`` false).
"""

from __future__ import annotations

import csv
import json
import math
import os
import unittest
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from sam_bundles_zoo import BundleTestCase, bundle_root

BUNDLE = "medsam"


BUNDLE_ROOT = bundle_root(BUNDLE)
CONFIGS = BUNDLE_ROOT / "configs"
WEIGHTS = Path(os.environ.get("MEDSAM_WEIGHTS") or BUNDLE_ROOT / "models" / "model.pt")
HAVE_WEIGHTS = WEIGHTS.is_file()
NO_WEIGHTS = f"LiteMedSAM weights not found at {WEIGHTS} (set MEDSAM_WEIGHTS or download the bundle's large files)"

SHAPE = (48, 48, 12)
SPACING = 3.0
SPLEEN, LIVER = 1, 5
TINY = {"num_workers": 0}


def write_case(image_path: Path, label_path: Path, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like int16 volume in HU (air, a body at ~40 HU, a bright liver on slices 4-6 and spleen on 5-6) and its
    label map, 3 mm isotropic; the organs move in-plane by a few voxels with ``seed``."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in SHAPE), indexing="ij")
    body = ((x - 23.5) / 22) ** 2 + ((y - 23.5) / 20) ** 2 <= 1
    image = np.where(body, 40.0, -1000.0) + rng.normal(0, 10, SHAPE)
    label = np.zeros(SHAPE, np.uint8)
    dx, dy = rng.integers(-2, 3, size=2)
    # few slices hold an organ: LiteMedSAM encodes only those, and a slice takes seconds on a busy CPU core
    organs = ((LIVER, (16, 22, 5.0), (10, 12, 1.2), 150.0), (SPLEEN, (34, 26, 5.5), (5, 7, 1.2), 200.0))
    for value, centre, radii, hu in organs:
        cx, cy, cz = centre[0] + dx, centre[1] + dy, centre[2]
        inside = ((x - cx) / radii[0]) ** 2 + ((y - cy) / radii[1]) ** 2 + ((z - cz) / radii[2]) ** 2 <= 1
        image[inside] = hu + rng.normal(0, 10, int(inside.sum()))
        label[inside] = value
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    image_path.parent.mkdir(parents=True, exist_ok=True)
    label_path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image.round().astype(np.int16), affine), str(image_path))
    nib.save(nib.Nifti1Image(label, affine), str(label_path))
    return image, label


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return float(2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1))


class TestMedSAMBundle(BundleTestCase):
    CONFIGS = CONFIGS
    OVERRIDES = TINY

    def setUp(self):
        super().setUp()
        self.dataset_dir = self.tmp / "medsam"
        self.labels = {}
        cases = (("imagesTr", "labelsTr", "case_000"), ("imagesTr", "labelsTr", "case_001"))
        for seed, (images, labels, case) in enumerate(cases + (("imagesTs", "labelsTs", "case_100"),)):
            _, self.labels[case] = write_case(
                self.dataset_dir / images / f"{case}.nii.gz", self.dataset_dir / labels / f"{case}.nii.gz", seed
            )

    def test_train(self):
        """One epoch, one slice of the first case; the last case (of two) validates, one slice per organ."""
        ckpt_dir = self.tmp / "models"
        pretrained = {"load_pretrain": True, "pretrained_path": str(WEIGHTS)} if HAVE_WEIGHTS else {}
        wf = self.workflow(
            "train.json",
            "train",
            dataset_dir=str(self.dataset_dir),
            ckpt_dir=str(ckpt_dir),
            output_dir=str(self.tmp / "runs"),
            epochs=1,
            slices_per_volume=1,
            batch_size=1,
            val_slices_per_structure=1,
            cache_rate=0.0,
            **{"load_pretrain": False, **pretrained},
        )
        self.check_and_run(wf)
        self.assertEqual(wf.trainer.state.epoch, 1)
        self.assertEqual(wf.trainer.state.iteration, 1)  # one training volume x 1 slice / batch 1
        output = wf.trainer.state.output
        self.assertTrue(math.isfinite(float((output[0] if isinstance(output, list) else output)["loss"])))
        val_dice = wf.evaluator.state.metrics["val_mean_dice"]
        self.assertTrue(0.0 <= val_dice <= 1.0, val_dice)
        self.assertEqual(sorted(p.name for p in ckpt_dir.iterdir()), ["model.pt"])
        state = torch.load(str(ckpt_dir / "model.pt"), map_location="cpu", weights_only=True)
        network = wf.parser.get_parsed_content("network_def")
        self.assertEqual(set(state), set(network.state_dict()))
        network.load_state_dict(state, strict=True)

    @unittest.skipUnless(HAVE_WEIGHTS, NO_WEIGHTS)
    def test_evaluate(self):
        out = self.tmp / "eval"
        wf = self.workflow(
            ["inference.json", "evaluate.json"],
            "infer",
            dataset_dir=str(self.dataset_dir),
            output_dir=str(out),
            ckpt_path=str(WEIGHTS),
        )
        self.check_and_run(wf)
        self.assertEqual(sorted(p.name for p in out.iterdir()), ["metrics.csv", "metrics.json"])
        with open(out / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        # one row per protocol (each organ alone, and the merged label map) and structure present in the case (the
        # other evaluated structures are skipped)
        protocols = ("slices", "propagation", "slices label map", "propagation label map")
        self.assertEqual(
            sorted((r["case"], r["protocol"], r["structure"], r["label"]) for r in rows),
            sorted(
                ("case_100", protocol, name, str(value))
                for protocol in protocols
                for name, value in (("spleen", SPLEEN), ("liver", LIVER))
            ),
        )
        for row in rows:  # LiteMedSAM's weights find the bright organs in tight boxes
            self.assertTrue(math.isfinite(float(row["dice"])) and 0.5 < float(row["dice"]) <= 1.0, row)
        report = json.loads((out / "metrics.json").read_text())
        self.assertEqual(sorted(report["summary"]), sorted(protocols))

    @unittest.skipUnless(HAVE_WEIGHTS, NO_WEIGHTS)
    def test_inference(self):
        out = self.tmp / "eval"
        image = self.dataset_dir / "imagesTs" / "case_100.nii.gz"
        liver = self.labels["case_100"] == LIVER
        nz = np.argwhere(liver)
        box = [int(v) for v in nz.min(0)] + [int(v) for v in nz.max(0)]  # file voxel indices [x0, y0, z0, x1, y1, z1]
        wf = self.workflow(
            "inference.json",
            "infer",
            output_dir=str(out),
            ckpt_path=str(WEIGHTS),
            input_dict={"image": str(image), "boxes": [box], "box_labels": [LIVER]},
        )
        self.check_and_run(wf)
        self.assertEqual(sorted(p.name for p in out.iterdir()), ["case_100_seg.nii.gz"])
        seg = nib.load(str(out / "case_100_seg.nii.gz"))
        pred = np.asarray(seg.dataobj)
        self.assertEqual(pred.shape, SHAPE)
        np.testing.assert_allclose(seg.affine, nib.load(str(image)).affine, atol=1e-4)
        self.assertEqual(set(np.unique(pred).tolist()), {0, LIVER})
        liver_dice = dice(pred == LIVER, liver)  # LiteMedSAM's weights find the bright organ in its tight box
        self.assertGreater(liver_dice, 0.5, f"liver Dice {liver_dice:.3f}")


if __name__ == "__main__":
    unittest.main()
