"""Helpers shared by the bundle tests: building and running ``ConfigWorkflow``s, error chains, torchrun launches,
and fake networks that configs can name as ``workflow_utils.ForegroundCube`` / ``workflow_utils.ClickSlices``
(tests/ is on ``sys.path``)."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow

from common.errors import error_chain


# ----------------------------------------------------------------------------------------------------------- errors
def error_text(exc: BaseException) -> str:
    """Every exception of the chain as ``Type: message``, one per line."""
    return "\n".join(f"{type(e).__name__}: {e}" for e in error_chain(exc))


def files_left(folder: Path) -> list[str]:
    """Paths under ``folder`` relative to it, sorted (empty if it does not exist)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# ------------------------------------------------------------------------------------------------------------ masks
def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    pred, ref = pred.astype(bool), ref.astype(bool)
    return float(2.0 * (pred & ref).sum() / (pred.sum() + ref.sum()))


def box_of(mask: np.ndarray) -> list[int]:
    """Inclusive box ``[lo..., hi...]`` of a mask, as plain ints (file voxel indices)."""
    nz = np.argwhere(mask)
    return [int(v) for v in nz.min(0)] + [int(v) for v in nz.max(0)]


def read_dicom_series(folder: Path) -> tuple[sitk.Image, list[str]]:
    """A DICOM series folder as ITK sorts it: the image and its slice files in that order."""
    reader = sitk.ImageSeriesReader()
    files = list(reader.GetGDCMSeriesFileNames(str(folder)))
    reader.SetFileNames(files)
    return reader.Execute(), files


def label_on_grid(path: Path, image: sitk.Image) -> np.ndarray:
    """A label file placed on ``image``'s grid through physical space (nearest neighbour), as ``(z, y, x)``."""
    label = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(sitk.Resample(label, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0))


# -------------------------------------------------------------------------------------------------------- workflows
def ct_labels_on_image(totalseg_dir: Path, volume: str) -> np.ndarray:
    """The shared CT label map (``volume`` ``"3mm"`` or ``"dicom"``) in its image file's voxel order ``(i, j, k)``;
    the DICOM series' labels are placed on its grid through physical space."""
    import nibabel as nib

    if volume == "3mm":
        return np.asarray(nib.load(str(totalseg_dir / "ct_abdomen_3mm_labels.nii.gz")).dataobj)
    series, _ = read_dicom_series(totalseg_dir / "dicom")
    return label_on_grid(totalseg_dir / "ct_dicom_labels.nii.gz", series).transpose(2, 1, 0)


def inference_mask(configs: Path, out_dir: Path, input_dict: dict, **override) -> np.ndarray:
    """Run ``inference.json`` into ``out_dir`` and return the one ``*_seg.nii.gz`` it writes, in file voxel order."""
    import nibabel as nib

    run_inference(configs, out_dir, input_dict, **override)
    (written,) = out_dir.glob("*_seg.nii.gz")
    return np.asarray(nib.load(str(written)).dataobj)


def network_def(target: str, sizes: dict) -> dict:
    """A bundle ``network_def`` component building ``target`` (dotted path) with ``sizes`` (tuples as JSON lists)."""
    return {"_target_": target, **{k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()}}


def make_workflow(configs: Path, files, workflow_type: str, **override) -> ConfigWorkflow:
    """``ConfigWorkflow`` over ``configs/<file>`` for each of ``files`` (one name or a list), without logging setup."""
    files = [files] if isinstance(files, str) else list(files)
    return ConfigWorkflow(
        config_file=[str(configs / f) for f in files], workflow_type=workflow_type, logging_file=False, **override
    )


def checked_properties(wf: ConfigWorkflow):
    """``wf.check_properties()``; monai 1.6.1 raises KeyError instead of listing a missing required id."""
    try:
        return wf.check_properties()
    except KeyError as err:
        pytest.fail(f"check_properties raised {err!r}: a required property id is missing from the config")


def verify_clicked_2d_net(
    configs: Path, network_def: dict, image_size: int, low_res_size: int, extra_forward_args: dict | None = None
) -> None:
    """MONAI's ``verify_net_in_out`` for a 2-D prompted bundle (SAMUS, SAMIHS) at tiny sizes: ``image_size``
    square input, one click (or ``extra_forward_args``, e.g. a dense mask prompt), ``low_res_size`` square logits."""
    from monai.bundle import verify_net_in_out

    verify_net_in_out(
        net_id="network_def",
        meta_file=str(configs / "metadata.json"),
        config_file=str(configs / "inference.json"),
        device="cpu",
        network_def=network_def,
        extra_forward_args=extra_forward_args
        or {"point_coords": torch.tensor([[[10.0, 12.0]]]), "point_labels": torch.ones(1, 1, dtype=torch.long)},
        **{
            "_meta_#network_data_format#inputs#image#spatial_shape": [image_size, image_size],
            "_meta_#network_data_format#outputs#pred#spatial_shape": [low_res_size, low_res_size],
        },
    )


def run_workflow(wf: ConfigWorkflow) -> ConfigWorkflow:
    """initialize, run and (always) finalize."""
    wf.initialize()
    try:
        wf.run()
    finally:
        wf.finalize()
    return wf


def run_recording_cases(wf: ConfigWorkflow, per_case) -> list:
    """Run an initialised evaluation workflow (then always finalize), collecting ``per_case(batch_item,
    output_item)`` for every case; the evaluator's batch and output are decollated, one dict per case."""
    seen = []
    wf.evaluator.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda engine: seen.extend(per_case(b, o) for b, o in zip(engine.state.batch, engine.state.output)),
    )
    try:
        wf.run()
    finally:
        wf.finalize()
    return seen


def run_inference(configs: Path, out_dir: Path, input_dict: dict | None = None, extra=(), **override) -> ConfigWorkflow:
    """Run ``inference.json`` (plus ``extra`` config files) writing to ``out_dir``."""
    override["output_dir"] = str(out_dir)
    if input_dict is not None:
        override["input_dict"] = input_dict
    return run_workflow(make_workflow(configs, ["inference.json", *extra], "infer", **override))


def expect_failure(wf_factory, out_dir: Path, *fragments: str) -> str:
    """Run the workflow, expect it to fail with every fragment somewhere in the error chain, and nothing written."""
    with pytest.raises(Exception) as info:
        run_workflow(wf_factory())
    text = error_text(info.value)
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in the error chain:\n{text}"
    assert files_left(out_dir) == [], f"files left in {out_dir} after a failure: {files_left(out_dir)}"
    return text


# --------------------------------------------------------------------------------------------------------- torchrun
def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_process_group(process: subprocess.Popen, grace_s: float = 0.0) -> None:
    """Stop ``process`` and everything in its session (started with ``start_new_session=True``): SIGTERM and up to
    ``grace_s`` seconds to exit, then SIGKILL; waits until the group is gone."""
    pgid = process.pid
    if grace_s > 0 and process_group_alive(pgid):
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.time() + grace_s
        while process_group_alive(pgid) and time.time() < deadline:
            time.sleep(0.5)
            process.poll()
    if process_group_alive(pgid):
        os.killpg(pgid, signal.SIGKILL)


def train_with_torchrun(configs: Path, repo_root: Path, tmp_path: Path, overrides: dict, network) -> str:
    """``train.json`` + ``multi_gpu_train.json`` under :func:`run_bundle_torchrun`, ``overrides`` written as a third
    config file (nested values survive); checks that validation ran and that ``ckpt_dir`` holds only ``model.pt``,
    which loads strictly into ``network``. Returns the output."""
    ckpt_dir = tmp_path / "ckpt"
    tiny = tmp_path / "tiny.json"
    tiny.write_text(json.dumps({**overrides, "ckpt_dir": str(ckpt_dir), "output_dir": str(tmp_path / "runs")}))
    files = [configs / "train.json", configs / "multi_gpu_train.json", tiny]
    output = run_bundle_torchrun(files, {}, repo_root, timeout=240)
    assert "val_mean_dice" in output
    assert files_left(ckpt_dir) == ["model.pt"]
    load_strict(ckpt_dir / "model.pt", network)
    return output


def run_bundle_torchrun(config_files, overrides: dict, cwd: Path, nproc: int = 2, timeout: float = 300) -> str:
    """``torchrun -m monai.bundle run`` with ``nproc`` CPU processes (gloo, 127.0.0.1 only); returns the output.

    Fails the test if it exits non-zero or runs past ``timeout`` seconds; then the whole process group this
    started (launcher and workers) is killed.
    """
    files = "[" + ",".join(f"'{f}'" for f in config_files) + "]"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--nnodes=1",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "--local_addr",
        "127.0.0.1",
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        files,
        "--logging_file",
        "False",
    ]
    for key, value in overrides.items():
        command += [f"--{key}", str(value)]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen(
        command,
        cwd=str(cwd),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process_group(proc)  # the launcher and its workers, which this call started
        output, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish within {timeout} s:\n{output[-4000:]}")
    assert proc.returncode == 0, output[-6000:]
    return output


# ------------------------------------------------------------------------------------------------------ fake models
class ForegroundCube(torch.nn.Module):
    """Fake promptable network: logits ``(B, 2, *spatial)`` with background 0 and foreground ``+value`` everywhere,
    so a point-patch inferer predicts exactly its cube. One dummy parameter, so a saved state dict loads strictly."""

    def __init__(self, value: float = 10.0) -> None:
        super().__init__()
        self.value = float(value)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, image: torch.Tensor, points: torch.Tensor | None = None) -> torch.Tensor:
        background = torch.zeros_like(image[:, :1]) + 0.0 * self.dummy
        return torch.cat([background, background + self.value], dim=1)


class ClickSlices(torch.nn.Module):
    """Fake click-conditioned network (MSA's interface): ``forward(image, condition (B, S, X, Y, Z))`` -> logits
    ``(B, S, X, Y, Z)`` of ``+value`` on every slice along Z whose click map holds a non-zero click, ``-value``
    elsewhere. One dummy parameter, so a saved state dict loads strictly."""

    def __init__(self, value: float = 10.0) -> None:
        super().__init__()
        self.value = float(value)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, image: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        clicked = condition.ne(0).flatten(2, 3).any(2)  # (B, S, Z)
        logits = torch.where(clicked, self.value, -self.value).to(image.dtype) + 0.0 * self.dummy
        return logits[:, :, None, None, :].repeat(1, 1, *image.shape[2:4], 1)  # a real (writable) tensor


def read_metrics_rows(out: Path) -> list[dict]:
    """Rows of ``<out>/metrics.csv`` written by ``StructureMetricsReport``."""
    with open(out / "metrics.csv") as f:
        return list(csv.DictReader(f))


def informative_positions(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fill SAM's position tables (``rel_pos*``, ``pos_embed``; zero at initialisation) with random values in place,
    so a table that is dropped or not copied shows; returns ``state``."""
    for key, value in state.items():
        if "rel_pos" in key or "pos_embed" in key:
            value.normal_()
    return state


def save_weights(folder: Path, state: dict[str, torch.Tensor], name: str = "model.pt") -> Path:
    """``torch.save`` a state dict as ``folder / name``; returns the path."""
    path = folder / name
    torch.save(state, str(path))
    return path


def load_strict(path: Path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A saved ``model.pt``: must be a plain state dict (``weights_only``) that loads strictly into ``model``."""
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return state
