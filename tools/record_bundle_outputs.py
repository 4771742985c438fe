"""Record what each bundle's inference and evaluation configs produce on the shared real CT, to show that a config
or library refactor changes no result.

    python tools/record_bundle_outputs.py record --repo . --medsam_weights bundles/medsam/models/model.pt \
        --out tests/data/bundle_outputs.json

Runs, with ``ConfigWorkflow`` in this process (``common`` imported from ``--repo``), on
``../shared/data/totalseg_ct/ct_abdomen_3mm.nii.gz``: MedSAM with its LiteMedSAM weights (two organ boxes;
evaluation of two organs), 3DSAM-adapter and MSA with tiny networks whose weights are drawn from a fixed seed
(ten pancreas points; two liver clicks; evaluation on the same volume). Each run reads ``configs/inference.json`` with
``configs/evaluate.json`` layered on top for evaluation. Recorded: the sha256 of every written label map's voxels
(shape, dtype and bytes; not the gzip file, whose header holds a time stamp), the same hash of every evaluated
prediction after postprocessing (of MedSAM's, its masks: its float logits are not bit-identical across CPUs), the
per-case metric rows, and the sha256
of the generated weights (so a change in how they are drawn shows as such).
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import fire
import nibabel as nib
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
# float32 encoders: the record must not depend on whether the machine computes bfloat16 natively ("auto")
FLOAT32 = {"precision": "float32"}
PANCREAS, LIVER, SPLEEN, KIDNEY_RIGHT = 7, 5, 1, 2


def _sha256_array(array: np.ndarray) -> str:
    digest = hashlib.sha256(f"{array.shape}{array.dtype}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _sha256_state(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _box(label: np.ndarray, value: int) -> list[int]:
    nz = np.argwhere(label == value)
    return [int(v) for v in nz.min(0)] + [int(v) for v in nz.max(0)]


def _points(label: np.ndarray, value: int, count: int) -> list[list[int]]:
    nz = np.argwhere(label == value)
    return [nz[i].tolist() for i in np.linspace(0, len(nz) - 1, count).astype(int)]


def _tiny_weights(folder: Path, build, seed: int) -> tuple[Path, str]:
    """Seeded default init, position tables (zero at init) filled from the same seed; saved as ``model.pt``."""
    torch.manual_seed(seed)
    state = build().state_dict()
    for key, value in state.items():
        if "rel_pos" in key or "pos_embed" in key:
            value.normal_()
    path = folder / f"tiny_{seed}.pt"
    torch.save(state, str(path))
    return path, _sha256_state(state)


def _run(configs: Path, files: list[str], workflow_type: str, masks_only: bool = False, **override) -> list[str]:
    """Run the workflow; returns the sha256 of every item's ``pred`` after postprocessing, in order (with
    ``masks_only``, of ``pred > 0``: float logits differ in their last bits between CPUs, AVX2 against AVX512)."""
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(
        config_file=[str(configs / f) for f in files], workflow_type=workflow_type, logging_file=False, **override
    )
    wf.initialize()
    preds: list[str] = []

    def record(engine) -> None:
        for item in engine.state.output:
            pred = item["pred"].detach().cpu().numpy()
            preds.append(_sha256_array((pred > 0).astype(np.uint8) if masks_only else pred))

    wf.evaluator.add_event_handler(Events.ITERATION_COMPLETED, record)
    try:
        wf.run()
    finally:
        wf.finalize()
    return preds


def _infer_and_evaluate(
    configs: Path, out: Path, network: dict, inference: dict, evaluation: dict, masks_only: bool = False
) -> tuple[dict[str, str], dict]:
    """``inference.json`` then ``inference.json`` + ``evaluate.json``, both with the ``network`` overrides; returns
    the written label maps' hashes and the evaluation record (``masks_only``: see :func:`_run`)."""
    _run(configs, ["inference.json"], "infer", output_dir=str(out / "infer"), **network, **inference)
    preds = _run(
        configs,
        ["inference.json", "evaluate.json"],
        "infer",
        masks_only,
        output_dir=str(out / "eval"),
        **network,
        **evaluation,
    )
    return _label_maps(out / "infer"), _evaluation(out / "eval", preds)


def _label_maps(folder: Path) -> dict[str, str]:
    return {p.name: _sha256_array(np.asarray(nib.load(str(p)).dataobj)) for p in sorted(folder.glob("**/*.nii.gz"))}


def _evaluation(folder: Path, preds: list[str]) -> dict:
    """The per-case metric rows of the evaluation report and the hashes of the evaluated predictions."""
    return {"rows": json.loads((folder / "metrics.json").read_text())["rows"], "preds": preds}


def record(
    repo: str = str(REPO),
    medsam_weights: str = str(REPO / "bundles" / "medsam" / "models" / "model.pt"),
    data: str = str(REPO.parent / "shared" / "data" / "totalseg_ct"),
    out: str | None = None,
) -> dict:
    """Run every case with the bundles and ``common`` of ``repo``; returns the record (and writes it to ``out``)."""
    repo_path = Path(repo).resolve()
    sys.path.insert(0, str(repo_path))
    from common.networks.msa import TINY_SIZES as MSA_TINY
    from common.networks.msa import build_msa
    from common.networks.sam3d_adapter import TINY_SIZES as SAM3D_TINY
    from common.networks.sam3d_adapter import build_sam3d_adapter

    ct = Path(data) / "ct_abdomen_3mm.nii.gz"
    label = np.asarray(nib.load(str(Path(data) / "ct_abdomen_3mm_labels.nii.gz")).dataobj)
    bundles = repo_path / "bundles"
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        layout = tmp / "data"
        for folder in ("imagesTs", "labelsTs"):
            (layout / folder).mkdir(parents=True)
        (layout / "imagesTs" / "ct_abdomen_3mm.nii.gz").symlink_to(ct)
        (layout / "labelsTs" / "ct_abdomen_3mm.nii.gz").symlink_to(Path(data) / "ct_abdomen_3mm_labels.nii.gz")
        case = {"image": "imagesTs/ct_abdomen_3mm.nii.gz", "label": "labelsTs/ct_abdomen_3mm.nii.gz"}
        (layout / "datalist.json").write_text(json.dumps({"test": [case], "validation": [case]}))
        datalist = {"dataset_dir": str(layout), "datalist_file": str(layout / "datalist.json"), "num_workers": 0}

        result["medsam_inference"], result["medsam_evaluate"] = _infer_and_evaluate(
            bundles / "medsam" / "configs",
            tmp / "medsam",
            {"ckpt_path": medsam_weights, **FLOAT32},
            {
                "input_dict": {
                    "image": str(ct),
                    "boxes": [_box(label, LIVER), _box(label, KIDNEY_RIGHT)],
                    "box_labels": [LIVER, KIDNEY_RIGHT],
                }
            },
            {"dataset_dir": str(layout), "structures": {str(LIVER): "liver", str(SPLEEN): "spleen"}},
            masks_only=True,  # MedSAM's evaluation predictions are full-size float logits
        )

        weights, result["3dsam_weights"] = _tiny_weights(tmp, lambda: build_sam3d_adapter(**SAM3D_TINY), seed=0)
        result["3dsam_inference"], result["3dsam_evaluate"] = _infer_and_evaluate(
            bundles / "3dsam_pancreas" / "configs",
            tmp / "sam3d",
            {
                "ckpt_path": str(weights),
                **FLOAT32,
                "network_def": {"_target_": "common.networks.sam3d_adapter.build_sam3d_adapter", **SAM3D_TINY},
                "roi_size": SAM3D_TINY["roi_size"],
            },
            {"input_dict": {"image": str(ct), "points": _points(label, PANCREAS, 10)}, "output_label": PANCREAS},
            {**datalist, "target_labels": [PANCREAS], "target_name": "pancreas"},
        )

        weights, result["msa_weights"] = _tiny_weights(tmp, lambda: build_msa(num_slices=16, **MSA_TINY), seed=1)
        result["msa_inference"], result["msa_evaluate"] = _infer_and_evaluate(
            bundles / "msa" / "configs",
            tmp / "msa",
            {
                "ckpt_path": str(weights),
                **FLOAT32,
                "network_def": {"_target_": "common.networks.msa.build_msa", "num_slices": "@num_slices", **MSA_TINY},
                "roi_size": 16,
            },
            {
                "input_dict": {"image": str(ct), "points": _points(label, LIVER, 2), "point_labels": [1, 1]},
                "output_label": LIVER,
            },
            {**datalist, "datalist_key": "test", "structures": [LIVER, SPLEEN], "structure_names": ["liver", "spleen"]},
        )
    if out is not None:
        from common.atomic import write_text_atomic

        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, json.dumps(result, indent=4) + "\n")
    return result


if __name__ == "__main__":
    fire.Fire({"record": record})
