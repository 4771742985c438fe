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
