"""Model-zoo style unit tests of the samihs_ich bundle (``ci/unit_tests/test_samihs_ich.py`` in a model-zoo checkout
or in the bundle's zip): training, evaluation and inference run through MONAI's ``ConfigWorkflow`` on the bundle's
own configs, with a tiny SAMIHS (64 px, nested ``network_def#...`` overrides) on a seeded synthetic CT-ICH layout
(``ct_scans/<id>.nii`` + ``masks/<id>.nii``: noisy brain-like HU volumes with a bright haemorrhage on two slices).
They prove that every config initialises, passes ``check_properties()``, runs and writes what it promises:
``model.pt`` in ``ckpt_dir``, ``metrics.json``/``metrics.csv`` with per-slice rows and per-patient 3-D Dice, a
NIfTI label volume on the input's grid.

Plain ``unittest``; the code is reached only through the configs (no import of the shared library, which the zip
vendors under another name). No SAM checkpoint is needed (``init_from_sam`` false).
"""

from __future__ import annotations

import json
import math
import unittest

import nibabel as nib
import numpy as np
from sam_bundles_zoo import SAMIHS_TINY, BundleTestCase, bundle_root

BUNDLE = "samihs_ich"
CONFIGS = bundle_root(BUNDLE) / "configs"

SHAPE = (24, 20, 5)  # (X, Y, Z) voxels of the synthetic volumes
BLEED_SLICES = (1, 2)
TINY = {"num_workers": 0, **SAMIHS_TINY}


class TestSAMIHSBundle(BundleTestCase):
    CONFIGS = CONFIGS
    OVERRIDES = TINY

    def setUp(self):
        super().setUp()
        self.dataset_dir = self.tmp / "ct-ich"
        for folder in ("ct_scans", "masks"):
            (self.dataset_dir / folder).mkdir(parents=True)
        rng = np.random.default_rng(0)
        affine = np.diag([0.45, 0.45, 5.0, 1.0])
        entries = {}
        for p, split in enumerate(("training", "training", "validation", "test")):
            volume = rng.normal(35, 8, SHAPE).astype(np.int16)
            mask = np.zeros(SHAPE, np.uint8)
            for z in BLEED_SLICES:
                mask[8 + p : 14 + p, 6:11, z] = 1
            volume[mask > 0] += 40  # acute blood is brighter than brain
            name = f"{p + 49:03d}.nii"
            nib.save(nib.Nifti1Image(volume, affine), str(self.dataset_dir / "ct_scans" / name))
            nib.save(nib.Nifti1Image(mask, affine), str(self.dataset_dir / "masks" / name))
            slices = BLEED_SLICES if split == "training" else range(SHAPE[2])
            entries.setdefault(split, []).extend(
                {
                    "image": f"ct_scans/{name}",
                    "label": f"masks/{name}",
                    "patient": name[:3],
                    "slice": z,
                    "positive": z in BLEED_SLICES,
                }
                for z in slices
            )
        self.datalist = self.tmp / "datalist.json"
        self.datalist.write_text(json.dumps(entries, indent=4))
        self.data = {"dataset_dir": str(self.dataset_dir), "datalist_file": str(self.datalist), "label_size": 16}

    def test_train(self):
        ckpt_dir = self.tmp / "models"
        wf = self.workflow(
            "train.json",
            "train",
            ckpt_dir=str(ckpt_dir),
            output_dir=str(self.tmp / "runs"),
            epochs=1,
            low_res_size=32,
            init_from_sam=False,
            **self.data,
        )
        self.check_and_run(wf)
        self.assertEqual((wf.trainer.state.epoch, wf.trainer.state.iteration), (1, 2))  # 4 slices, batch 2
        output = wf.trainer.state.output
        self.assertTrue(math.isfinite(float((output[0] if isinstance(output, list) else output)["loss"])))
        self.assertEqual(sorted(p.name for p in ckpt_dir.iterdir()), ["model.pt"])

    def test_evaluate(self):
        out, weights = self.tmp / "eval", self.tmp / "model.pt"
        wf = self.workflow(
            ["inference.json", "evaluate.json"], "infer", output_dir=str(out), ckpt_path=str(weights), **self.data
        )
        self.save_random_weights(wf, weights)
        self.check_and_run(wf)
        self.assertEqual(sorted(p.name for p in out.iterdir()), ["metrics.csv", "metrics.json"])
        report = json.loads((out / "metrics.json").read_text())
        self.assertEqual([(r["image"], r["slice"]) for r in report["rows"]], [("052", z) for z in range(SHAPE[2])])
        self.assertEqual(report["summary"]["volumes"]["dice_3d"]["images"], 1)

    def test_inference(self):
        out, weights = self.tmp / "eval", self.tmp / "model.pt"
        image = self.dataset_dir / "ct_scans" / "049.nii"
        wf = self.workflow(
            "inference.json",
            "infer",
            output_dir=str(out),
            ckpt_path=str(weights),
            input_dict={"image": str(image), "points": [[10, 8, 1]], "boxes": [[7, 5, 2, 15, 12, 2]]},
        )
        self.save_random_weights(wf, weights)
        self.check_and_run(wf)
        self.assertEqual(sorted(p.name for p in out.iterdir()), ["049_seg.nii.gz"])
        seg = nib.load(str(out / "049_seg.nii.gz"))
        self.assertEqual(seg.shape, SHAPE)
        np.testing.assert_allclose(seg.affine, nib.load(str(image)).affine, atol=1e-5)
        prompted = {int(z) for z in np.nonzero(np.asarray(seg.dataobj).any(axis=(0, 1)))[0]}
        self.assertTrue(prompted <= {1, 2}, prompted)


if __name__ == "__main__":
    unittest.main()
