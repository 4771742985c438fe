"""The model-zoo style unit tests ``tests/model_zoo/test_<bundle>.py`` (shipped in each bundle's zip as
``ci/unit_tests/test_<bundle>.py``) run as model-zoo CI runs them: ``python -m unittest -v test_<bundle>`` in a fresh
process beside the file (model-zoo's runner imports it by module name), CPU only, with ``BUNDLE_ROOT`` set to
``bundles/<bundle>``. Each file must run all its tests
and pass them with none skipped: the medsam file gets the converted LiteMedSAM weights through ``MEDSAM_WEIGHTS``
(the ``litemedsam_weights`` fixture of tests/conftest.py), since ``bundles/medsam/models/model.pt`` is a git-ignored
large file that may be absent.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

TESTS_PER_FILE = {"medsam": 3, "3dsam_pancreas": 3, "msa": 3, "samus_busi": 3, "samihs_ich": 3, "samihs_polyp": 3}
TIMEOUT_S = 600


@pytest.mark.parametrize("bundle", sorted(TESTS_PER_FILE))
def test_model_zoo_unittest_file(bundle, repo_root, request):
    test_file = repo_root / "tests" / "model_zoo" / f"test_{bundle}.py"
    assert test_file.is_file()
    assert not (repo_root / "tests" / "model_zoo" / "__init__.py").exists(), "the files must stay standalone modules"
    env = {**os.environ, "BUNDLE_ROOT": str(repo_root / "bundles" / bundle), "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = str(repo_root)  # this repository's `common`, which the configs import (a zip vendors its own)
    if bundle == "medsam":
        env["MEDSAM_WEIGHTS"] = str(request.getfixturevalue("litemedsam_weights"))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "unittest", "-v", test_file.stem],
            cwd=str(test_file.parent),
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"{test_file.name} did not finish within {TIMEOUT_S} s:\n{str(err.stdout or '')[-4000:]}")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-8000:]
    count = TESTS_PER_FILE[bundle]
    assert re.search(rf"^Ran {count} tests? in ", output, re.MULTILINE), output[-4000:]
    assert re.search(r"^OK$", output, re.MULTILINE), f"not a plain OK (skipped or failed tests?):\n{output[-4000:]}"
