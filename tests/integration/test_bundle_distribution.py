"""Bundles as other groups get them: ``tools/package_bundle.py`` zips, unpacked and run in a fresh virtual
environment that has only the packaged metadata's dependencies (not this repository, not ``common``)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.networks import medsam
from workflow_utils import run_inference

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import package_bundle  # noqa: E402

BUNDLES = ["medsam", "3dsam_pancreas", "msa"]
VENV_INSTALL_TIMEOUT_S = 900
RUN_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def zips(repo_root, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    return {name: Path(package_bundle.package(str(repo_root / "bundles" / name), str(out))) for name in BUNDLES}


@pytest.mark.parametrize("name", BUNDLES)
def test_zip_layout_and_determinism(repo_root, zips, name, tmp_path):
    archive = zips[name]
    assert archive.name == f"{name}_v0.1.0.zip"
    again = Path(package_bundle.package(str(repo_root / "bundles" / name), str(tmp_path)))
    assert archive.read_bytes() == again.read_bytes()
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert Path(f"{archive}.sha256").read_text() == f"{digest}  {archive.name}\n"

    with zipfile.ZipFile(archive) as z:
        names = z.namelist()
        meta = json.loads(z.read(f"{name}/configs/metadata.json"))
        configs = {n: z.read(n).decode() for n in names if n.startswith(f"{name}/configs/") and n.endswith(".json")}
    assert all(n.startswith(f"{name}/") for n in names)
    assert {f"{name}/LICENSE", f"{name}/configs/inference.json", f"{name}/docs/README.md"} <= set(names)
    assert not any(n.startswith(f"{name}/models/") for n in names), "weights are fetched via large_files.yml"
    # every common.* module a config names is vendored (as a module file or a package)
    for text in configs.values():
        for reference in package_bundle.config_modules_in(text):
            parts = reference.split(".")
            assert any(f"{name}/{'/'.join(parts[:d])}.py" in names or f"{name}/{'/'.join(parts[:d])}/__init__.py"
                       in names for d in range(2, len(parts) + 1)), reference
    assert "sam-medical-bundles" not in meta["required_packages_version"]
    assert {"nibabel", "itk", "pytorch-ignite", "fire"} <= set(meta["required_packages_version"])


def test_large_files_yml_matches_the_published_weights(repo_root):
    listing = (repo_root / "bundles" / "medsam" / "large_files.yml").read_text()
    assert package_bundle.large_file_paths(repo_root / "bundles" / "medsam") == {"models/model.pt"}
    assert package_bundle.sha256(medsam.litemedsam_asset_path()) in listing
    assert "hash_type: \"sha256\"" in listing


def fresh_env(venv: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def run(command: list[str], cwd: Path, env: dict, timeout: float) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done.stdout + done.stderr


def test_download_and_run_in_a_fresh_venv(repo_root, zips, litemedsam_weights, tmp_path):
    """``monai.bundle download(url=file://...)`` -> ``download_large_files`` (file:// copy of the published
    LiteMedSAM weights, sha256 checked) -> ``python -m monai.bundle run`` inside the unpacked folder, in a venv
    with only torch, monai, numpy and the packaged ``required_packages_version``; the output equals this
    repository's own run of the same bundle."""
    archive = zips["medsam"]
    with zipfile.ZipFile(archive) as z:
        meta = json.loads(z.read("medsam/configs/metadata.json"))
    venv = tmp_path / "venv"
    env = fresh_env(venv)
    python = str(venv / "bin" / "python")
    run([sys.executable, "-m", "venv", str(venv)], tmp_path, env, 120)
    pins = [f"torch=={meta['pytorch_version']}", f"monai=={meta['monai_version']}", f"numpy=={meta['numpy_version']}",
            *[f"{k}=={v}" for k, v in meta["required_packages_version"].items()]]
    run([python, "-m", "pip", "install", "--quiet", *pins], tmp_path, env, VENV_INSTALL_TIMEOUT_S)

    bundles = tmp_path / "downloaded"
    run([python, "-c", "import sys, monai.bundle; monai.bundle.download(name='medsam', bundle_dir=sys.argv[1], "
         "url=sys.argv[2])", str(bundles), archive.as_uri()], tmp_path, env, RUN_TIMEOUT_S)
    bundle = bundles / "medsam"
    listing = bundle / "large_files.yml"
    published = Path(medsam.litemedsam_asset_path())
    listing.write_text("\n".join(f'    url: "{published.as_uri()}"' if line.strip().startswith("url:") else line
                                 for line in listing.read_text().splitlines()) + "\n")
    run([python, "-m", "monai.bundle", "download_large_files", "--bundle_path", str(bundle)], tmp_path, env,
        RUN_TIMEOUT_S)
    assert (bundle / "models" / "model.pt").read_bytes() == published.read_bytes()

    where = run([python, "-c", "import common; print(common.__file__)"], bundle, env, 60)
    assert str(bundle / "common" / "__init__.py") in where
    run([python, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--output_dir", "out"],
        bundle, env, RUN_TIMEOUT_S)
    (theirs,) = list((bundle / "out").glob("*_seg.nii.gz"))

    run_inference(repo_root / "bundles" / "medsam" / "configs", tmp_path / "ours", ckpt_path=str(litemedsam_weights))
    (ours,) = list((tmp_path / "ours").glob("*_seg.nii.gz"))
    theirs_image, ours_image = nib.load(str(theirs)), nib.load(str(ours))
    assert theirs.name == ours.name
    np.testing.assert_array_equal(np.asarray(theirs_image.dataobj), np.asarray(ours_image.dataobj))
    np.testing.assert_allclose(theirs_image.affine, ours_image.affine)
    assert np.asarray(ours_image.dataobj).any()
