"""``python -m common.label.serve``, the README's MONAI Label command: it needs no activated environment, checks
torchvision before monailabel imports it, and says how to fix a mismatched one. The server itself is started this
way by every test in ``tests/integration`` (``tests/label_servers.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.label import serve

REPO = Path(__file__).resolve().parents[2]
README_COMMAND = ".venv/bin/python -m common.label.serve --studies /data/ct"

# A torchvision built for another torch fails like this (the registry's CUDA build beside the CPU torch).
BROKEN_TORCHVISION = """
import importlib.abc, importlib.machinery, sys
class Broken(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torchvision":
            raise RuntimeError("operator torchvision::nms does not exist")
sys.meta_path.insert(0, Broken())
"""


def run_serve(arguments: list[str], site: Path, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m common.label.serve`` from ``cwd`` with only ``site`` (a sitecustomize) on PYTHONPATH and a PATH
    without this environment's ``bin``, as for a user who activated nothing."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(site)
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if Path(p) != Path(sys.executable).parent
    )
    command = [sys.executable, "-m", "common.label.serve", *arguments]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_readmes_give_the_command_that_needs_no_activation():
    for readme in (REPO / "README.md", REPO / "apps" / "sam_bundles" / "README.md"):
        text = readme.read_text()
        assert README_COMMAND in text, readme
        assert "bin/monailabel start_server" not in text, readme  # the shell script runs the python on PATH


def test_server_arguments_default_to_this_app_on_127_0_0_1_and_yield_to_given_ones():
    assert serve.server_arguments(["--studies", "/data/ct"]) == [
        "start_server", "--app", str(REPO / "apps" / "sam_bundles"), "--host", "127.0.0.1", "--studies", "/data/ct"
    ]  # fmt: skip
    given = ["--app", "/x/app", "--host", "0.0.0.0", "--studies", "s", "--port", "9000"]
    assert serve.server_arguments(given) == ["start_server", *given]


def test_matching_torchvision_for_the_installed_torch(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.13.0+cpu")
    monkeypatch.setattr(torch.version, "cuda", None)
    assert serve.matching_torchvision() == ("0.28.*", "https://download.pytorch.org/whl/cpu")
    monkeypatch.setattr(torch, "__version__", "2.9.1")
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    assert serve.matching_torchvision() == ("0.24.*", "https://download.pytorch.org/whl/cu128")


def test_a_mismatched_torchvision_stops_with_the_fix_before_monailabel_starts(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BROKEN_TORCHVISION)
    studies = tmp_path / "studies"
    studies.mkdir()
    done = run_serve(["--studies", str(studies), "--port", "1"], tmp_path, tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    series, index = serve.matching_torchvision()
    last = done.stderr.strip().splitlines()
    assert last[0].startswith("error: the MONAI Label server cannot start") and "torchvision::nms" in last[0]
    assert last[-1].strip() == (
        f'{sys.executable} -m pip install --force-reinstall --no-deps "torchvision=={series}" --index-url {index}'
    )
    assert not list(studies.iterdir())  # monailabel never ran (it writes a datastore file into the studies)
    check = run_serve(["--check"], tmp_path, tmp_path)
    assert check.returncode == 1 and "cannot start" in check.stderr


def test_check_passes_where_torchvision_loads(tmp_path):
    """With the tests' torchvision stand-in (or a working torchvision) the check passes, from any directory."""
    done = run_serve(["--check"], REPO / "tests" / "monailabel_site", tmp_path)
    assert done.returncode == 0, done.stderr
    assert "the server can start" in done.stdout


def test_monailabel_runs_in_this_interpreter(tmp_path):
    """``start_server --help`` is answered by monailabel's own parser, run by this interpreter without PATH."""
    pytest.importorskip("monailabel")
    done = run_serve(["--help"], REPO / "tests" / "monailabel_site", tmp_path)
    assert done.returncode == 0, done.stderr
    assert "--studies" in done.stdout and "--app" in done.stdout
