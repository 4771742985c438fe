"""Model-zoo style unit tests of the 3dsam_pancreas bundle (``ci/unit_tests/test_3dsam_pancreas.py`` in a model-zoo
checkout or in the bundle's zip): training, evaluation and inference run through MONAI's ``ConfigWorkflow`` on the
bundle's own configs, with the tiny network (nested ``network_def#...`` overrides, 16^3 crops) on a seeded synthetic
CT data set (48x48x12 int16 volumes at 3 mm: a pancreas ellipsoid, label 1, around a tumour core, label 2, the
bundle's target). They prove that every config initialises, passes ``check_properties()``, runs and writes what it
promises: ``model.pt`` in ``ckpt_dir``, ``metrics.json``/``metrics.csv`` with finite Dice, a label map on the
input's grid.

Plain ``unittest``; the code is reached only through the configs (no import of the shared library, which the zip
vendors under another name). The bundle folder is ``$BUNDLE_ROOT``, else ``models/3dsam_pancreas`` (model-zoo
layout, run from the model-zoo root), else the folder two levels above this file (``<bundle>/ci/unit_tests/``),
else ``bundles/3dsam_pancreas`` of the repository two levels above this file. No SAM checkpoint is needed
(``init_from_sam`` false); evaluation and inference use a freshly saved state dict of the workflow's own network.
"""

from __future__ import annotations

import csv
import json
import math
import unittest
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from sam_bundles_zoo import BundleTestCase, bundle_root

BUNDLE = "3dsam_pancreas"


BUNDLE_ROOT = bundle_root(BUNDLE)
CONFIGS = BUNDLE_ROOT / "configs"

SHAPE = (48, 48, 12)
SPACING = 3.0
PANCREAS, TUMOUR = 1, 2
ROI = 16
# build_sam3d_adapter's tiny sizes (TINY_SIZES of the shared library), as nested overrides of network_def
TINY_NET = {
    "network_def#upsample": 4,
    "network_def#embed_dim": 32,
    "network_def#depth": 4,
    "network_def#num_heads": 2,
    "network_def#sam_grid": 8,
    "network_def#sam_window": 3,
    "network_def#global_attn_indexes": [1, 3],
    "network_def#window": 2,
    "network_def#feature_dim": 16,
    "network_def#tap_blocks": [0, 1, 2, 3],
    "network_def#prompt_heads": 2,
    "network_def#prompt_mlp_dim": 32,
    "network_def#num_global_queries": 3,
    "network_def#decoder_dim": 8,
}
TINY = {"roi_size": ROI, "num_workers": 0, **TINY_NET}


def write_case(image_path: Path, label_path: Path, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like int16 volume in HU (air, a body at ~40 HU, a bright pancreas with a darker tumour core) and its
    label map, 3 mm isotropic; the organ moves by a few voxels with ``seed``."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in SHAPE), indexing="ij")
    body = ((x - 23.5) / 22) ** 2 + ((y - 23.5) / 20) ** 2 <= 1
    image = np.where(body, 40.0, -1000.0) + rng.normal(0, 10, SHAPE)
    label = np.zeros(SHAPE, np.uint8)
    cx, cy = 24 + rng.integers(-3, 4), 24 + rng.integers(-3, 4)
    for value, radii, hu in ((PANCREAS, (11, 8, 4.5), 160.0), (TUMOUR, (6, 5, 3), 80.0)):
        inside = ((x - cx) / radii[0]) ** 2 + ((y - cy) / radii[1]) ** 2 + ((z - 5.5) / radii[2]) ** 2 <= 1
        image[inside] = hu + rng.normal(0, 10, int(inside.sum()))
        label[inside] = value
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    image_path.parent.mkdir(parents=True, exist_ok=True)
    label_path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image.round().astype(np.int16), affine), str(image_path))
    nib.save(nib.Nifti1Image(label, affine), str(label_path))
    return image, label


class Test3DSAMPancreasBundle(BundleTestCase):
    CONFIGS = CONFIGS
    OVERRIDES = TINY

    def setUp(self):
        super().setUp()
        self.dataset_dir = self.tmp / "Task07_Pancreas"
        self.labels = {}
        for seed, case in enumerate(("pancreas_000", "pancreas_001", "pancreas_002")):
            _, self.labels[case] = write_case(
                self.dataset_dir / "imagesTr" / f"{case}.nii.gz", self.dataset_dir / "labelsTr" / f"{case}.nii.gz", seed
            )

        def entries(*cases):
            return [{"image": f"imagesTr/{c}.nii.gz", "label": f"labelsTr/{c}.nii.gz"} for c in cases]

        self.datalist_file = self.dataset_dir / "datalist.json"
        datalist = {
            "training": entries("pancreas_000", "pancreas_001"),
            "validation": entries("pancreas_002"),
            "test": entries("pancreas_002"),
        }
        self.datalist_file.write_text(json.dumps(datalist, indent=4))
        self.data = {"dataset_dir": str(self.dataset_dir), "datalist_file": str(self.datalist_file)}

    def test_train(self):
        ckpt_dir = self.tmp / "models"
        wf = self.workflow(
            "train.json",
            "train",
            ckpt_dir=str(ckpt_dir),
            output_dir=str(self.tmp / "runs"),
            epochs=1,
            init_from_sam=False,
            **self.data,
        )
        self.check_and_run(wf)
        self.assertEqual(wf.trainer.state.epoch, 1)
        self.assertEqual(wf.trainer.state.iteration, 2)  # two training volumes, batch size 1
        output = wf.trainer.state.output
        self.assertTrue(math.isfinite(float((output[0] if isinstance(output, list) else output)["loss"])))
        dice = wf.evaluator.state.metrics["val_mean_dice"]
        self.assertTrue(0.0 <= dice <= 1.0, dice)
        self.assertEqual(sorted(p.name for p in ckpt_dir.iterdir()), ["model.pt"])
        state = torch.load(str(ckpt_dir / "model.pt"), map_location="cpu", weights_only=True)
        network = wf.parser.get_parsed_content("network_def")
        self.assertEqual(set(state), set(network.state_dict()))
        network.load_state_dict(state, strict=True)

    def test_evaluate(self):
        out, weights = self.tmp / "eval", self.tmp / "model.pt"
        wf = self.workflow(
            ["inference.json", "evaluate.json"], "infer", output_dir=str(out), ckpt_path=str(weights), **self.data
        )
        self.save_random_weights(wf, weights)
        self.check_and_run(wf)
        self.assertEqual(sorted(p.name for p in out.iterdir()), ["metrics.csv", "metrics.json"])
        with open(out / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        self.assertEqual(
            sorted((r["case"], r["protocol"], r["structure"], r["label"]) for r in rows),
            sorted(("pancreas_002", f"{k}_points", "tumour", str(TUMOUR)) for k in (1, 3, 10)),
        )
        for row in rows:
            self.assertTrue(math.isfinite(float(row["dice"])) and 0.0 <= float(row["dice"]) <= 1.0, row)
        report = json.loads((out / "metrics.json").read_text())
        self.assertEqual(sorted(report["summary"]), ["10_points", "1_points", "3_points"])
        self.assertEqual(len(report["rows"]), 3)

    def test_inference(self):
        out, weights = self.tmp / "eval", self.tmp / "model.pt"
        image = self.dataset_dir / "imagesTr" / "pancreas_002.nii.gz"
        tumour = np.argwhere(self.labels["pancreas_002"] == TUMOUR)
        point = tumour[len(tumour) // 2].tolist()  # file voxel indices [x, y, z]
        wf = self.workflow(
            "inference.json",
            "infer",
            output_dir=str(out),
            ckpt_path=str(weights),
            input_dict={"image": str(image), "points": [point]},
        )
        self.save_random_weights(wf, weights)
        self.check_and_run(wf)
        self.assertEqual(sorted(p.name for p in out.iterdir()), ["pancreas_002_seg.nii.gz"])
        seg = nib.load(str(out / "pancreas_002_seg.nii.gz"))
        pred = np.asarray(seg.dataobj)
        self.assertEqual(pred.shape, SHAPE)
        self.assertTrue(set(np.unique(pred).tolist()) <= {0, 1})
        np.testing.assert_allclose(seg.affine, nib.load(str(image)).affine, atol=1e-4)


if __name__ == "__main__":
    unittest.main()
