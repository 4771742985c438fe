"""Model-zoo style unit tests of the samus_busi bundle (``ci/unit_tests/test_samus_busi.py`` in a model-zoo checkout
or in the bundle's zip): training, evaluation and inference run through MONAI's ``ConfigWorkflow`` on the bundle's
own configs, with a tiny SAMUS (32 px, nested ``network_def#...`` overrides) on a seeded synthetic ultrasound set in
BUSI's folder layout (grey speckle frames with a dark lesion; ``benign (i).png`` + ``benign (i)_mask.png``). They
prove that every config initialises, passes ``check_properties()``, runs and writes what it promises: ``model.pt``
in ``ckpt_dir``, ``metrics.json``/``metrics.csv`` with per-image Dice, a PNG label map of the input's size.

Plain ``unittest``; the code is reached only through the configs (no import of the shared library, which the zip
vendors under another name). The bundle folder is found as in ``sam_bundles_zoo.bundle_root``. No SAM checkpoint
is needed (``init_from_sam`` false); evaluation and inference use a freshly saved state dict of the workflow's
own network.
"""

from __future__ import annotations

import json
import math
import unittest
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sam_bundles_zoo import BundleTestCase, bundle_root

BUNDLE = "samus_busi"
BUNDLE_ROOT = bundle_root(BUNDLE)
CONFIGS = BUNDLE_ROOT / "configs"

SIZE = (40, 56)  # (H, W) of the synthetic frames
# build_samus's tiny sizes (TINY_SIZES of the shared library) as nested overrides of network_def
TINY_NET = {
    "network_def#image_size": 32,
    "network_def#patch_kernel": 8,
    "network_def#patch_stride": 4,
    "network_def#pos_embed_grid": 16,
    "network_def#cnn_channels": [4, 8],
    "network_def#embed_dim": 16,
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
TINY = {"image_size": 32, "num_workers": 0, **TINY_NET}


def write_frame(folder: Path, name: str, seed: int) -> None:
    """A speckled grey frame with a dark elliptic lesion, and its 0/255 mask."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: SIZE[0], : SIZE[1]]
    cy, cx = 15 + rng.integers(-3, 4), 25 + rng.integers(-5, 6)
    lesion = ((y - cy) / 8) ** 2 + ((x - cx) / 12) ** 2 <= 1
    frame = np.clip(rng.rayleigh(60.0, SIZE) * np.where(lesion, 0.3, 1.0), 0, 255).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame).save(folder / f"{name}.png")
    Image.fromarray(lesion.astype(np.uint8) * 255).save(folder / f"{name}_mask.png")


class TestSAMUSBundle(BundleTestCase):
    CONFIGS = CONFIGS
    OVERRIDES = TINY

    def setUp(self):
        super().setUp()
        self.dataset_dir = self.tmp / "BUSI"
        busi = self.dataset_dir / "Dataset_BUSI_with_GT"
        entries = []
        for i, group in enumerate(("benign", "malignant", "benign", "malignant")):
            name = f"{group} ({i + 1})"
            write_frame(busi / group, name, seed=i)
            entries.append(
                {
                    "image": f"Dataset_BUSI_with_GT/{group}/{name}.png",
                    "label": [f"Dataset_BUSI_with_GT/{group}/{name}_mask.png"],
                    "class_id": 1,
                }
            )
        self.datalist = self.tmp / "datalist.json"
        self.datalist.write_text(
            json.dumps({"training": entries[:2], "validation": entries[2:3], "test": entries[3:]}, indent=4)
        )
        self.data = {"dataset_dir": str(self.dataset_dir), "datalist_file": str(self.datalist)}

    def test_train(self):
        ckpt_dir = self.tmp / "models"
        wf = self.workflow(
            "train.json",
            "train",
            ckpt_dir=str(ckpt_dir),
            output_dir=str(self.tmp / "runs"),
            epochs=1,
            batch_size=2,
            low_res_size=32,
            init_from_sam=False,
            **self.data,
        )
        self.check_and_run(wf)
        self.assertEqual((wf.trainer.state.epoch, wf.trainer.state.iteration), (1, 1))
        output = wf.trainer.state.output
        self.assertTrue(math.isfinite(float((output[0] if isinstance(output, list) else output)["loss"])))
        dice = wf.evaluator.state.metrics["val_mean_dice"]
        self.assertTrue(0.0 <= dice <= 1.0, dice)
        self.assertEqual(sorted(p.name for p in ckpt_dir.iterdir()), ["model.pt"])
        network = wf.parser.get_parsed_content("network_def")
        network.load_state_dict(
            torch.load(str(ckpt_dir / "model.pt"), map_location="cpu", weights_only=True), strict=True
        )

    def test_evaluate(self):
        out, weights = self.tmp / "eval", self.tmp / "model.pt"
        wf = self.workflow(
            ["inference.json", "evaluate.json"], "infer", output_dir=str(out), ckpt_path=str(weights), **self.data
        )
        self.save_random_weights(wf, weights)
        self.check_and_run(wf)
        self.assertEqual(sorted(p.name for p in out.iterdir()), ["metrics.csv", "metrics.json"])
        report = json.loads((out / "metrics.json").read_text())
        self.assertEqual([r["image"] for r in report["rows"]], ["malignant (4)"])
        self.assertTrue(0.0 <= report["rows"][0]["dice"] <= 1.0)
        self.assertEqual(sorted(report["summary"]), ["dice", "hd95_px", "iou", "sensitivity", "specificity"])

    def test_inference(self):
        out, weights = self.tmp / "eval", self.tmp / "model.pt"
        image = self.dataset_dir / "Dataset_BUSI_with_GT" / "benign" / "benign (1).png"
        wf = self.workflow(
            "inference.json",
            "infer",
            output_dir=str(out),
            ckpt_path=str(weights),
            input_dict={"image": str(image), "points": [[25, 15]], "boxes": [[10, 5, 40, 30]]},
        )
        self.save_random_weights(wf, weights)
        self.check_and_run(wf)
        self.assertEqual(sorted(p.name for p in out.iterdir()), ["benign (1)_seg.png"])
        mask = np.asarray(Image.open(out / "benign (1)_seg.png"))
        self.assertEqual(mask.shape, SIZE)
        self.assertTrue(set(np.unique(mask).tolist()) <= {0, 255})


if __name__ == "__main__":
    unittest.main()
