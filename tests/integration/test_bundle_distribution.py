"""Bundles as other groups get them: ``tools/package_bundle.py`` zips, unpacked and run in a fresh virtual
environment that has only the packaged metadata's dependencies (not this repository, not ``common``)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from workflow_utils import run_inference, save_weights

from common.networks import medsam
from common.networks.msa import TINY_SIZES as MSA_TINY
from common.networks.msa import build_msa
from common.networks.sam3d_adapter import TINY_SIZES as SAM3D_TINY
from common.networks.sam3d_adapter import build_sam3d_adapter
from common.networks.samus import TINY_SIZES as SAMUS_TINY
from common.networks.samus import build_samus

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import package_bundle  # noqa: E402

BUNDLES = ["medsam", "3dsam_pancreas", "msa", "samus_busi", "samihs_ich", "samihs_polyp"]
VENV_INSTALL_TIMEOUT_S = 900
RUN_TIMEOUT_S = 600


def version_of(repo_root: Path, name: str) -> str:
    return json.loads((repo_root / "bundles" / name / "configs" / "metadata.json").read_text())["version"]


@pytest.fixture(scope="module")
def zips(repo_root, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    return {name: Path(package_bundle.package(str(repo_root / "bundles" / name), str(out))) for name in BUNDLES}


@pytest.mark.parametrize("name", BUNDLES)
def test_zip_layout_and_determinism(repo_root, zips, name, tmp_path):
    archive = zips[name]
    assert archive.name == f"{name}_v{version_of(repo_root, name)}.zip"
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
    assert {f"{name}/docs/data_license.txt", f"{name}/ci/unit_tests/test_{name}.py"} <= set(names)
    assert f"{name}/ci/unit_tests/sam_bundles_zoo.py" in names
    assert not any(n.startswith(f"{name}/models/") for n in names), "weights are fetched via large_files.yml"
    package = package_bundle.vendored_package(name)
    assert f"{name}/{package}/__init__.py" in names and not any(n.startswith(f"{name}/common/") for n in names)
    with zipfile.ZipFile(archive) as z:
        code = {n: z.read(n).decode() for n in names if n.startswith(f"{name}/{package}/") and n.endswith(".py")}
    # every reference to the library, in configs and vendored code, names the bundle's own package
    for text in [*configs.values(), *code.values()]:
        assert not package_bundle.config_modules_in(text), sorted(package_bundle.config_modules_in(text))[:5]
    for text in configs.values():
        for reference in package_bundle.config_modules_in(text.replace(package, "common")):
            parts = reference.replace("common", package, 1).split(".")
            assert any(
                f"{name}/{'/'.join(parts[:d])}.py" in names or f"{name}/{'/'.join(parts[:d])}/__init__.py" in names
                for d in range(2, len(parts) + 1)
            ), reference
    assert "sam-medical-bundles" not in meta["required_packages_version"]
    assert {"nibabel", "itk", "pytorch-ignite", "fire"} <= set(meta["required_packages_version"])


def test_unlisted_large_file_is_refused(repo_root, tmp_path):
    bundle = tmp_path / "msa"
    shutil.copytree(repo_root / "bundles" / "msa", bundle, ignore=shutil.ignore_patterns("models", "eval"))
    (bundle / "models").mkdir()
    with open(bundle / "models" / "model.pt", "wb") as handle:
        handle.truncate(26 * 2**20)
    with pytest.raises(ValueError, match="over 25 MB: list it in .*large_files.yml"):
        package_bundle.package(str(bundle), str(tmp_path / "dist"))
    assert not (tmp_path / "dist").exists()


def test_large_files_yml_matches_the_published_weights(repo_root):
    listing = (repo_root / "bundles" / "medsam" / "large_files.yml").read_text()
    assert package_bundle.large_file_paths(repo_root / "bundles" / "medsam") == {"models/model.pt"}
    assert package_bundle.sha256(medsam.litemedsam_asset_path()) in listing
    assert 'hash_type: "sha256"' in listing


class FreshVenv:
    """A virtual environment with only the packaged metadata's dependencies; runs commands without PYTHONPATH."""

    def __init__(self, root: Path):
        self.root = root
        self.python = str(root / "bin" / "python")
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        self.env["PATH"] = f"{root / 'bin'}{os.pathsep}{self.env.get('PATH', '')}"

    def run(self, args: list[str], cwd: Path, timeout: float = RUN_TIMEOUT_S) -> str:
        done = subprocess.run(
            [self.python, *args], cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
        return done.stdout + done.stderr

    def download(self, archive: Path, into: Path) -> Path:
        """``monai.bundle.download(name, bundle_dir, url=file://...)``; returns the unpacked bundle folder."""
        name = archive.name.split("_v")[0]
        self.run(
            [
                "-c",
                "import sys, monai.bundle; monai.bundle.download(name=sys.argv[1], bundle_dir=sys.argv[2], "
                "url=sys.argv[3])",
                name,
                str(into),
                archive.as_uri(),
            ],
            into.parent,
        )
        return into / name


@pytest.fixture(scope="module")
def fresh_venv(zips, tmp_path_factory) -> FreshVenv:
    """torch, monai and numpy at the metadata's versions plus every zip's ``required_packages_version``."""
    root = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=120)
    pins = set()
    for archive in zips.values():
        with zipfile.ZipFile(archive) as z:
            meta = json.loads(z.read(f"{archive.name.split('_v')[0]}/configs/metadata.json"))
        pins |= {
            f"torch=={meta['pytorch_version']}",
            f"monai=={meta['monai_version']}",
            f"numpy=={meta['numpy_version']}",
            *[f"{k}=={v}" for k, v in meta["required_packages_version"].items()],
        }
    venv = FreshVenv(root)
    venv.run(["-m", "pip", "install", "--quiet", *sorted(pins)], root.parent, VENV_INSTALL_TIMEOUT_S)
    return venv


def test_medsam_download_and_run_in_a_fresh_venv(repo_root, zips, fresh_venv, litemedsam_weights, tmp_path):
    """download (file:// zip) -> ``download_large_files`` (file:// copy of the published LiteMedSAM weights, sha256
    checked) -> ``python -m monai.bundle run`` inside the unpacked folder with its defaults; the output equals this
    repository's own run of the bundle."""
    bundle = fresh_venv.download(zips["medsam"], tmp_path / "downloaded")
    listing = bundle / "large_files.yml"
    published = Path(medsam.litemedsam_asset_path())
    listing.write_text(
        "\n".join(
            f'    url: "{published.as_uri()}"' if line.strip().startswith("url:") else line
            for line in listing.read_text().splitlines()
        )
        + "\n"
    )
    fresh_venv.run(["-m", "monai.bundle", "download_large_files", "--bundle_path", str(bundle)], tmp_path)
    assert (bundle / "models" / "model.pt").read_bytes() == published.read_bytes()

    package = package_bundle.vendored_package("medsam")
    where = fresh_venv.run(["-c", f"import {package}; print({package}.__file__)"], bundle)
    assert str(bundle / package / "__init__.py") in where
    fresh_venv.run(
        ["-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--output_dir", "out"], bundle
    )
    (theirs,) = list((bundle / "out").glob("*_seg.nii.gz"))

    run_inference(repo_root / "bundles" / "medsam" / "configs", tmp_path / "ours", ckpt_path=str(litemedsam_weights))
    (ours,) = list((tmp_path / "ours").glob("*_seg.nii.gz"))
    assert_same_image(theirs, ours)
    assert np.asarray(nib.load(str(ours)).dataobj).any()


def assert_same_image(a: Path, b: Path) -> None:
    image_a, image_b = nib.load(str(a)), nib.load(str(b))
    assert a.name == b.name
    np.testing.assert_array_equal(np.asarray(image_a.dataobj), np.asarray(image_b.dataobj))
    np.testing.assert_allclose(image_a.affine, image_b.affine)


def vendored(network_def: dict, name: str) -> dict:
    """``network_def`` with its ``_target_`` in the bundle's vendored package (as the zip's configs name it)."""
    return {
        **network_def,
        "_target_": package_bundle.rewrite_common(network_def["_target_"], package_bundle.vendored_package(name)),
    }


TINY_RUNS = {
    "3dsam_pancreas": (
        {"_target_": "common.networks.sam3d_adapter.build_sam3d_adapter", **SAM3D_TINY},
        {"roi_size": SAM3D_TINY["roi_size"]},
        lambda: build_sam3d_adapter(**SAM3D_TINY),
        ["points"],
    ),
    "msa": (
        {"_target_": "common.networks.msa.build_msa", "num_slices": 16, **MSA_TINY},
        {"num_slices": 16},
        lambda: build_msa(num_slices=16, **MSA_TINY),
        ["points", "point_labels"],
    ),
}


@pytest.mark.parametrize("name", sorted(TINY_RUNS))
def test_tiny_point_bundle_runs_in_a_fresh_venv(repo_root, zips, fresh_venv, ct3, totalseg_dir, name, tmp_path):
    """The unpacked 3DSAM-adapter / MSA zips run their inference.json (tiny network and weights given on the
    command line, real CT, clicks on the pancreas) in the fresh venv, equal to this repository's run."""
    network_def, sizes, build, keys = TINY_RUNS[name]
    torch.manual_seed(0)
    weights = save_weights(tmp_path, build().state_dict(), "tiny.pt")
    _, label = ct3
    clicks = [[int(v) for v in np.argwhere(label == 7)[0]]]
    input_dict = {"image": str(totalseg_dir / "ct_abdomen_3mm.nii.gz"), "points": clicks, "point_labels": [1]}
    input_dict = {k: v for k, v in input_dict.items() if k == "image" or k in keys}
    overrides = {"network_def": network_def, **sizes, "ckpt_path": str(weights), "input_dict": input_dict}

    bundle = fresh_venv.download(zips[name], tmp_path / "downloaded")
    packaged = {**overrides, "network_def": vendored(network_def, name)}
    cli = [f"--{key}={json.dumps(value)}" for key, value in packaged.items()]
    fresh_venv.run(
        ["-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--output_dir", "out", *cli], bundle
    )
    (theirs,) = list((bundle / "out").glob("*_seg.nii.gz"))
    run_inference(repo_root / "bundles" / name / "configs", tmp_path / "ours", **overrides)
    (ours,) = list((tmp_path / "ours").glob("*_seg.nii.gz"))
    assert_same_image(theirs, ours)


def test_samus_runs_its_default_input_in_a_fresh_venv(repo_root, zips, fresh_venv, tmp_path):
    """The unpacked samus_busi zip runs inference.json on its built-in default input (the ultrasound frame that the
    packaged metadata's pydicom-data brings) with a tiny network and weights from the command line; the NIfTI output
    equals this repository's run."""
    network_def = {"_target_": "common.networks.samus.build_samus", **SAMUS_TINY}
    torch.manual_seed(0)
    weights = save_weights(tmp_path, build_samus(**SAMUS_TINY).state_dict(), "tiny.pt")
    overrides = {"network_def": network_def, "image_size": SAMUS_TINY["image_size"], "ckpt_path": str(weights)}
    bundle = fresh_venv.download(zips["samus_busi"], tmp_path / "downloaded")
    packaged = {**overrides, "network_def": vendored(network_def, "samus_busi")}
    cli = [f"--{key}={json.dumps(value)}" for key, value in packaged.items()]
    fresh_venv.run(
        ["-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--output_dir", "out", *cli], bundle
    )
    (theirs,) = list((bundle / "out").glob("*_seg.nii.gz"))
    run_inference(repo_root / "bundles" / "samus_busi" / "configs", tmp_path / "ours", **overrides)
    (ours,) = list((tmp_path / "ours").glob("*_seg.nii.gz"))
    assert theirs.name == "US1_UNCR_seg.nii.gz" and nib.load(str(theirs)).shape == (640, 480)
    assert_same_image(theirs, ours)


ONE_PROCESS_SCRIPT = """
import json, sys
from monai.bundle import ConfigWorkflow

for run in json.loads(sys.argv[1]):
    sys.path.insert(0, run["bundle"])
    wf = ConfigWorkflow(config_file=run["bundle"] + "/configs/inference.json", workflow_type="infer",
                        logging_file=False, output_dir=run["out"], **run["overrides"])
    wf.initialize()
    wf.run()
    wf.finalize()
    package = sys.modules[run["package"]]
    print(run["package"], "from", package.__file__)
"""


def test_three_packaged_bundles_in_one_process(zips, fresh_venv, ct3, totalseg_dir, litemedsam_weights, tmp_path):
    """MedSAM, then 3DSAM-adapter, then MSA, unpacked and run one after the other in one interpreter (as MONAI
    Label's stock app or a notebook loads bundles): each imports its own vendored package and writes its output."""
    _, label = ct3
    image = str(totalseg_dir / "ct_abdomen_3mm.nii.gz")
    liver = np.argwhere(label == 5)
    runs = []
    for name in ("medsam", "3dsam_pancreas", "msa"):
        bundle = fresh_venv.download(zips[name], tmp_path / "downloaded")
        if name == "medsam":
            box = [int(v) for v in liver.min(0)] + [int(v) for v in liver.max(0)]
            overrides = {
                "ckpt_path": str(litemedsam_weights),
                "input_dict": {"image": image, "boxes": [box], "box_labels": [5]},
            }
        else:
            network_def, sizes, build, keys = TINY_RUNS[name]
            torch.manual_seed(0)
            weights = save_weights(tmp_path, build().state_dict(), f"{name}.pt")
            input_dict = {"image": image, "points": [liver[len(liver) // 2].tolist()], "point_labels": [1]}
            input_dict = {k: v for k, v in input_dict.items() if k == "image" or k in keys}
            overrides = {
                "network_def": vendored(network_def, name),
                **sizes,
                "ckpt_path": str(weights),
                "input_dict": input_dict,
            }
        runs.append(
            {
                "bundle": str(bundle),
                "package": package_bundle.vendored_package(name),
                "out": str(tmp_path / f"out_{name}"),
                "overrides": overrides,
            }
        )
    output = fresh_venv.run(["-c", ONE_PROCESS_SCRIPT, json.dumps(runs)], tmp_path)
    for run in runs:
        assert f"{run['package']} from {run['bundle']}/{run['package']}/__init__.py" in output
        (written,) = list(Path(run["out"]).glob("*_seg.nii.gz"))
        assert nib.load(str(written)).shape == label.shape
