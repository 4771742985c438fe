"""Model-zoo style unit tests of the samihs_polyp bundle (``ci/unit_tests/test_samihs_polyp.py`` in a model-zoo
checkout or in the bundle's zip): training, evaluation and inference run through MONAI's ``ConfigWorkflow`` on the
bundle's own configs, with a tiny SAMIHS (64 px, nested ``network_def#...`` overrides) on seeded synthetic clips in
SUN-SEG's layout (``Frame/<clip>/*.jpg``, ``GT/<clip>/*.png``) with external probability maps at PNS+'s 256 x 448
(``<maps>/<clip>/*.png``). They prove that every config initialises, passes ``check_properties()``, runs and writes
what it promises: ``model.pt`` in ``ckpt_dir``; ``per_clip.csv``/``summary.json`` of the SUN-SEG toolbox;
probability PNGs at the frame size mirroring ``GT/<clip>/``.

Plain ``unittest``; the code is reached only through the configs (no import of the shared library, which the zip
vendors under another name). No SAM checkpoint is needed (``init_from_sam`` false).
"""

from __future__ import annotations

import json
import math
import unittest

import numpy as np
from PIL import Image
from sam_bundles_zoo import SAMIHS_TINY, BundleTestCase, bundle_root

BUNDLE = "samihs_polyp"
CONFIGS = bundle_root(BUNDLE) / "configs"

SIZE = (48, 56)  # (H, W) of the synthetic frames
TINY = {"num_workers": 0, **SAMIHS_TINY}


def write_clip(split, maps, clip: str, frames: int, seed: int) -> None:
    """A reddish frame with a lighter disc drifting right, its 0/255 mask, and a blurred shifted 256 x 448 map."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: SIZE[0], : SIZE[1]]
    for folder in (split / "Frame" / clip, split / "GT" / clip, maps / clip):
        folder.mkdir(parents=True, exist_ok=True)
    for k in range(frames):
        disc = (yy - 24) ** 2 + (xx - 18 - 3 * k) ** 2 <= 81
        rgb = np.stack([180 + 40 * disc, 80 + 30 * disc, 70 + 0 * disc], -1) + rng.normal(0, 5, (*SIZE, 3))
        name = f"{clip}_a1_ayy_image{k + 1}"
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(split / "Frame" / clip / f"{name}.jpg")
        Image.fromarray(disc.astype(np.uint8) * 255).save(split / "GT" / clip / f"{name}.png")
        shifted = np.roll(disc, 2, axis=1).astype(np.uint8) * 220
        Image.fromarray(shifted).resize((448, 256), Image.Resampling.BILINEAR).save(maps / clip / f"{name}.png")


class TestSAMIHSPolypBundle(BundleTestCase):
    CONFIGS = CONFIGS
    OVERRIDES = TINY

    def setUp(self):
        super().setUp()
        self.train, self.test, self.maps = self.tmp / "Train", self.tmp / "Test", self.tmp / "maps"
        for i, clip in enumerate(("case1", "case2")):
            write_clip(self.train, self.maps, clip, frames=3, seed=i)
        write_clip(self.test, self.maps, "case3", frames=4, seed=3)

    def test_train(self):
        ckpt_dir = self.tmp / "models"
        wf = self.workflow(
            "train.json",
            "train",
            ckpt_dir=str(ckpt_dir),
            output_dir=str(self.tmp / "runs"),
            dataset_dir=str(self.train),
            maps_dir=str(self.maps),
            map_source="external",
            val_fraction=0.5,
            epochs=1,
            low_res_size=32,
            init_from_sam=False,
        )
        self.check_and_run(wf)
        self.assertEqual((wf.trainer.state.epoch, wf.trainer.state.iteration), (1, 2))  # 3 frames, batch 2
        output = wf.trainer.state.output
        self.assertTrue(math.isfinite(float((output[0] if isinstance(output, list) else output)["loss"])))
        self.assertEqual(sorted(p.name for p in ckpt_dir.iterdir()), ["model.pt"])

    def test_evaluate(self):
        out, weights = self.tmp / "eval", self.tmp / "model.pt"
        wf = self.workflow(
            ["inference.json", "evaluate.json"],
            "infer",
            output_dir=str(out),
            ckpt_path=str(weights),
            dataset_dir=str(self.test),
            maps_dir=str(self.maps),
        )
        self.save_random_weights(wf, weights)
        self.check_and_run(wf)
        self.assertEqual(sorted(p.name for p in out.iterdir()), ["per_clip.csv", "predictions", "summary.json"])
        summary = json.loads((out / "summary.json").read_text())
        self.assertEqual((summary["n_clips"], summary["n_frames"]), (1, 2))  # first and last frames dropped
        self.assertTrue(0.0 <= summary["metrics"]["maxDice"] <= 1.0)

    def test_inference(self):
        out, weights = self.tmp / "out", self.tmp / "model.pt"
        wf = self.workflow(
            "inference.json",
            "infer",
            output_dir=str(out),
            ckpt_path=str(weights),
            dataset_dir=str(self.test),
            maps_dir=str(self.maps),
        )
        self.save_random_weights(wf, weights)
        self.check_and_run(wf)
        written = sorted(p.name for p in (out / "case3").iterdir())
        self.assertEqual(written, sorted(p.name for p in (self.test / "GT" / "case3").iterdir()))
        png = Image.open(out / "case3" / written[0])
        self.assertEqual((png.mode, png.size), ("L", (SIZE[1], SIZE[0])))


if __name__ == "__main__":
    unittest.main()
