"""What the model-zoo style tests of the three bundles share: finding the bundle folder, and running its configs.

Shipped beside each test in the bundle's zip (``ci/unit_tests/sam_bundles_zoo.py``; model-zoo's runner puts that
folder on ``sys.path``). Like the tests, it reaches the code only through the configs.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import unittest
from pathlib import Path

import torch
from monai.bundle import ConfigWorkflow


def bundle_root(name: str) -> Path:
    """The bundle folder: ``$BUNDLE_ROOT``; else ``models/<name>`` (model-zoo root as cwd); else the bundle holding
    this file as ``ci/unit_tests/``; else ``bundles/<name>`` of the repository two levels above this file. It is
    appended to ``sys.path``: a packaged bundle's vendored library sits beside ``configs/``."""
    if os.environ.get("BUNDLE_ROOT"):
        root = Path(os.environ["BUNDLE_ROOT"]).resolve()
    elif os.path.isdir(os.path.join("models", name)):
        root = Path("models", name).resolve()
    else:
        above = Path(__file__).resolve().parents[2]
        root = above if (above / "configs").is_dir() else above / "bundles" / name
    if str(root) not in sys.path:
        sys.path.append(str(root))
    return root


#: build_samihs's tiny sizes (TINY_SIZES of the shared library) as nested overrides of network_def: the samihs_ich and
#: samihs_polyp bundles build the same network.
SAMIHS_TINY = {
    "image_size": 64,
    "network_def#image_size": 64,
    "network_def#patch_size": 8,
    "network_def#embed_dim": 32,
    "network_def#depth": 2,
    "network_def#num_heads": 2,
    "network_def#window_size": 3,
    "network_def#global_attn_indexes": [1],
    "network_def#bottleneck": 8,
    "network_def#prompt_embed_dim": 16,
    "network_def#mask_in_chans": 4,
    "network_def#decoder_num_heads": 2,
    "network_def#decoder_mlp_dim": 32,
    "network_def#iou_head_hidden_dim": 16,
}


class BundleTestCase(unittest.TestCase):
    """A temporary folder per test (``self.tmp``) and the bundle's workflows with ``OVERRIDES`` applied."""

    CONFIGS: Path
    OVERRIDES: dict = {}

    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp())

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def workflow(self, config_file, workflow_type: str, **override) -> ConfigWorkflow:
        """``ConfigWorkflow`` over ``configs/<file>`` (one name or a list layered in order), with the bundle's
        logging and metadata files."""
        files = [config_file] if isinstance(config_file, str) else config_file
        return ConfigWorkflow(
            config_file=[str(self.CONFIGS / f) for f in files],
            workflow_type=workflow_type,
            logging_file=str(self.CONFIGS / "logging.conf"),
            meta_file=str(self.CONFIGS / "metadata.json"),
            **{**self.OVERRIDES, **override},
        )

    def check_and_run(self, wf: ConfigWorkflow) -> None:
        """initialize, ``check_properties()`` empty, run, and (always) finalize."""
        wf.initialize()
        self.assertIn(wf.check_properties(), (None, []))
        try:
            wf.run()
        finally:
            wf.finalize()

    def save_random_weights(self, wf: ConfigWorkflow, path: Path) -> None:
        """The workflow's own network, freshly built and seeded, saved as a plain state dict."""
        torch.manual_seed(0)
        torch.save(wf.parser.get_parsed_content("network_def").state_dict(), str(path))
