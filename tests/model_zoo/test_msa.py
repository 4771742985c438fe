"""Model-zoo style unit tests of the msa bundle (``ci/unit_tests/test_msa.py`` in a model-zoo checkout or in the
bundle's zip): training, evaluation and inference run through MONAI's ``ConfigWorkflow`` on the bundle's own
configs, with the tiny network (``image_size`` 64 and nested ``network_def#...`` overrides, 16^3 crops of 16 slices)
on a seeded synthetic CT data set (48x48x12 int16 volumes at 3 mm with two bright organs of BTCV's labels: spleen 1,
liver 6). They prove that every config initialises, passes ``check_properties()``, runs and writes what it promises:
``model.pt`` in ``ckpt_dir``, ``metrics.json``/``metrics.csv`` with finite Dice, a label map on the input's grid.

Plain ``unittest``; the code is reached only through the configs (no import of the shared library, which the zip
vendors under another name). The bundle folder is ``$BUNDLE_ROOT``, else ``models/msa`` (model-zoo layout, run from
the model-zoo root), else the folder two levels above this file (``<bundle>/ci/unit_tests/``), else ``bundles/msa``
of the repository two levels above this file. No SAM checkpoint is needed (``init_from_sam`` false); evaluation and
inference use a freshly saved state dict of the workflow's own network.
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

BUNDLE = "msa"


BUNDLE_ROOT = bundle_root(BUNDLE)
CONFIGS = BUNDLE_ROOT / "configs"

SHAPE = (48, 48, 12)
SPACING = 3.0
SPLEEN, LIVER = 1, 6
# build_msa's tiny sizes (TINY_SIZES of the shared library): image_size through the config's own key, the rest as
# nested overrides of network_def
TINY_NET = {
    "network_def#patch_size": 8,
    "network_def#embed_dim": 32,
    "network_def#depth": 2,
    "network_def#num_heads": 2,
    "network_def#window_size": 3,
    "network_def#global_attn_indexes": [1],
    "network_def#prompt_embed_dim": 16,
    "network_def#mask_in_chans": 4,
    "network_def#decoder_num_heads": 2,
    "network_def#decoder_mlp_dim": 32,
    "network_def#iou_head_hidden_dim": 16,
}
TINY = {"image_size": 64, "roi_size": 16, "num_workers": 0, **TINY_NET}


def write_case(image_path: Path, label_path: Path, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like int16 volume in HU (air, a body at ~40 HU, a bright liver and spleen) and its label map, 3 mm
    isotropic; the organs move by a few voxels with ``seed``."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in SHAPE), indexing="ij")
    body = ((x - 23.5) / 22) ** 2 + ((y - 23.5) / 20) ** 2 <= 1
    image = np.where(body, 40.0, -1000.0) + rng.normal(0, 10, SHAPE)
    label = np.zeros(SHAPE, np.uint8)
    dx, dy = rng.integers(-2, 3, size=2)
    organs = ((LIVER, (16, 22, 5.5), (10, 12, 5), 150.0), (SPLEEN, (34, 26, 5.5), (5, 7, 4), 200.0))
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


class TestMSABundle(BundleTestCase):
    CONFIGS = CONFIGS
    OVERRIDES = TINY

    def setUp(self):
        super().setUp()
        self.dataset_dir = self.tmp / "BTCV"
        self.labels = {}
        for seed, case in enumerate(("img0001", "img0002")):
            _, self.labels[case] = write_case(
                self.dataset_dir / "imagesTr" / f"{case}.nii.gz", self.dataset_dir / "labelsTr" / f"{case}.nii.gz", seed
            )

        def entries(*cases):
            return [{"image": f"imagesTr/{c}.nii.gz", "label": f"labelsTr/{c}.nii.gz"} for c in cases]

        # the configs' default datalist_file: <dataset_dir>/dataset_0.json
        datalist = {"training": entries("img0001"), "validation": entries("img0002")}
        (self.dataset_dir / "dataset_0.json").write_text(json.dumps(datalist, indent=4))

    def test_train(self):
        ckpt_dir = self.tmp / "models"
        wf = self.workflow(
            "train.json",
            "train",
            dataset_dir=str(self.dataset_dir),
            ckpt_dir=str(ckpt_dir),
            output_dir=str(self.tmp / "runs"),
            epochs=1,
            val_interval=1,
            num_samples=2,
            init_from_sam=False,
        )
        self.check_and_run(wf)
        self.assertEqual(wf.trainer.state.epoch, 1)
        self.assertEqual(wf.trainer.state.iteration, 1)  # one volume: its two crops make one batch
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
            ["inference.json", "evaluate.json"],
            "infer",
            dataset_dir=str(self.dataset_dir),
            output_dir=str(out),
            ckpt_path=str(weights),
        )
        self.save_random_weights(wf, weights)
        self.check_and_run(wf)
        self.assertEqual(sorted(p.name for p in out.iterdir()), ["metrics.csv", "metrics.json"])
        with open(out / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        # one row per structure present in the case (the other eleven BTCV structures are skipped)
        self.assertEqual(
            sorted((r["case"], r["protocol"], r["structure"], r["label"]) for r in rows),
            [("img0002", "clicks", "liver", str(LIVER)), ("img0002", "clicks", "spleen", str(SPLEEN))],
        )
        for row in rows:
            self.assertTrue(math.isfinite(float(row["dice"])) and 0.0 <= float(row["dice"]) <= 1.0, row)
        report = json.loads((out / "metrics.json").read_text())
        self.assertEqual(sorted(report["summary"]["clicks"]), ["liver", "spleen"])

    def test_inference(self):
        out, weights = self.tmp / "eval", self.tmp / "model.pt"
        image = self.dataset_dir / "imagesTr" / "img0002.nii.gz"
        liver = self.labels["img0002"] == LIVER
        points = [np.argwhere(liver[:, :, k]).mean(0).round().astype(int).tolist() + [k] for k in (4, 5, 6)]
        self.assertTrue(all(liver[x, y, z] for x, y, z in points))
        wf = self.workflow(
            "inference.json",
            "infer",
            output_dir=str(out),
            ckpt_path=str(weights),
            input_dict={"image": str(image), "points": points, "point_labels": [1, 1, 1]},
        )
        self.save_random_weights(wf, weights)
        self.check_and_run(wf)
        self.assertEqual(sorted(p.name for p in out.iterdir()), ["img0002_seg.nii.gz"])
        seg = nib.load(str(out / "img0002_seg.nii.gz"))
        pred = np.asarray(seg.dataobj)
        self.assertEqual(pred.shape, SHAPE)
        self.assertTrue(set(np.unique(pred).tolist()) <= {0, 1})
        np.testing.assert_allclose(seg.affine, nib.load(str(image)).affine, atol=1e-4)


if __name__ == "__main__":
    unittest.main()
