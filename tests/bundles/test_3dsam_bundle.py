"""3dsam_pancreas bundle through MONAI's bundle machinery (the model-zoo unit-test pattern), with the tiny network
(``TINY_SIZES``, 16^3 crops) on the real 3 mm CT volume of ``../shared/data/totalseg_ct``, pancreas (label 7) as
the target: training (SAM initialisation, frozen weights, LR schedule, gradient clipping), torchrun on two CPU
processes, evaluation reports, and the inference geometry with a fake network that predicts its whole patch.

Points are given as the bundle's users give them: voxel indices ``[x, y, z]`` of the file as stored on disk.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ckpt_export, verify_net_in_out
from workflow_utils import (
    ForegroundCube,
    box_of,
    checked_properties,
    expect_failure,
    files_left,
    informative_positions,
    load_strict,
    make_workflow,
    read_metrics_rows,
    run_bundle_torchrun,
    run_inference,
    run_recording_cases,
    save_weights,
)

from common.engines.gradient_clipping import GradientClipHandler
from common.networks.sam3d_adapter import TINY_SIZES, build_sam3d_adapter

PANCREAS = 7
ROI = TINY_SIZES["roi_size"]
TINY_NET = {"_target_": "common.networks.sam3d_adapter.build_sam3d_adapter", **TINY_SIZES}
TINY = {"network_def": TINY_NET, "roi_size": ROI, "num_workers": 0, "target_labels": [PANCREAS]}
PROTOCOLS = ["1_points", "3_points", "10_points"]


# ---------------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def configs(repo_root) -> Path:
    """``bundles/3dsam_pancreas/configs`` (overrides the medsam folder of tests/bundles/conftest.py)."""
    return repo_root / "bundles" / "3dsam_pancreas" / "configs"


def write_datalist(path: Path, training: list[str], validation: list[str], test: list[str]) -> Path:
    """Decathlon-style datalist of ``imagesTr/<case>.nii.gz`` / ``labelsTr/<case>.nii.gz`` entries."""

    def entries(cases):
        return [{"image": f"imagesTr/{c}.nii.gz", "label": f"labelsTr/{c}.nii.gz"} for c in cases]

    path.write_text(
        json.dumps({"training": entries(training), "validation": entries(validation), "test": entries(test)})
    )
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, totalseg_dir) -> Path:
    """imagesTr/labelsTr with links to the 3 mm volume and its labels (case_a, case_b), and ``datalist.json``:
    both cases train, case_a validates and tests."""
    root = tmp_path_factory.mktemp("sam3d_data")
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir()
    for case in ("case_a", "case_b"):
        (root / "imagesTr" / f"{case}.nii.gz").symlink_to(totalseg_dir / "ct_abdomen_3mm.nii.gz")
        (root / "labelsTr" / f"{case}.nii.gz").symlink_to(totalseg_dir / "ct_abdomen_3mm_labels.nii.gz")
    write_datalist(root / "datalist.json", ["case_a", "case_b"], ["case_a"], ["case_a"])
    return root


def data_override(dataset: Path, datalist: str = "datalist.json") -> dict:
    return {"dataset_dir": str(dataset), "datalist_file": str(dataset / datalist), **TINY}


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """A random tiny 3DSAM-adapter ``model.pt`` (plain state dict)."""
    torch.manual_seed(0)
    return save_weights(tmp_path_factory.mktemp("sam3d_weights"), build_sam3d_adapter(**TINY_SIZES).state_dict())


@pytest.fixture(scope="module")
def sam_checkpoint(tmp_path_factory) -> Path:
    """A tiny SAM checkpoint in the official layout, from segment-anything's own ``ImageEncoderViT`` (random)."""
    sam_ref = pytest.importorskip("segment_anything.modeling")  # tests/conftest.py installs the torchvision stand-in
    torch.manual_seed(1)
    encoder = sam_ref.ImageEncoderViT(
        img_size=128,
        patch_size=16,
        embed_dim=32,
        depth=4,
        num_heads=2,
        window_size=3,
        global_attn_indexes=(1, 3),
        out_chans=16,
        use_rel_pos=True,
        qkv_bias=True,
        norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6),
    )
    state = informative_positions({f"image_encoder.{k}": v for k, v in encoder.state_dict().items()})
    return save_weights(tmp_path_factory.mktemp("sam"), state, "sam_tiny.pth")


@pytest.fixture(scope="module")
def cube_weights(tmp_path_factory) -> Path:
    return save_weights(tmp_path_factory.mktemp("cube_weights"), ForegroundCube().state_dict())


def load_tiny(path: Path) -> dict[str, torch.Tensor]:
    """A saved ``model.pt``: must be a plain state dict that loads strictly into the tiny network."""
    return load_strict(path, build_sam3d_adapter(**TINY_SIZES))


# ---------------------------------------------------------------------------------------------------- network, meta
def test_metadata_matches_config(configs):
    meta = json.loads((configs / "metadata.json").read_text())["network_data_format"]
    roi = json.loads((configs / "inference.json").read_text())["roi_size"]
    assert meta["inputs"]["image"]["spatial_shape"] == meta["outputs"]["pred"]["spatial_shape"] == [roi] * 3
    assert meta["inputs"]["points"]["value_range"] == [0, roi - 1]
    assert meta["outputs"]["pred"]["num_channels"] == 2


def test_verify_net_in_out(configs):
    shapes = {
        f"_meta_#network_data_format#{part}#spatial_shape": [ROI] * 3 for part in ("inputs#image", "outputs#pred")
    }
    points = torch.tensor([[[2.0, 3.0, 4.0], [12.0, 9.0, 15.0]]])
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(configs / "metadata.json"),
        config_file=str(configs / "inference.json"),
        device="cpu",
        network_def=TINY_NET,
        extra_forward_args={"points": points},
        **shapes,
    )


# ------------------------------------------------------------------------------------------------------------ train
def test_train_from_sam(configs, dataset, sam_checkpoint, tmp_path):
    """2 of 4 epochs (stopped after 2, so the LR is mid-schedule), 2 volumes per epoch, SAM-initialised encoder."""
    ckpt_dir, epochs, lr = tmp_path / "ckpt", 4, 4e-4
    wf = make_workflow(
        configs,
        "train.json",
        "train",
        ckpt_dir=str(ckpt_dir),
        output_dir=str(tmp_path / "runs"),
        epochs=epochs,
        learning_rate=lr,
        init_from_sam=True,
        sam_checkpoint=str(sam_checkpoint),
        **data_override(dataset),
    )
    wf.initialize()
    assert checked_properties(wf) == []
    net = wf.parser.get_parsed_content("network")
    start = {k: v.clone() for k, v in net.state_dict().items()}
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    wf.trainer.add_event_handler(Events.EPOCH_COMPLETED(once=2), lambda engine: engine.terminate())
    wf.run()
    wf.finalize()

    assert wf.trainer.state.epoch == 2 and wf.trainer.state.iteration == 4
    optimizer = wf.parser.get_parsed_content("optimizer")
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lr * (1 - 0.99 * 2 / epochs), rel=1e-6)
    clip = [h for h in wf.parser.get_parsed_content("train#handlers") if isinstance(h, GradientClipHandler)]
    assert len(clip) == 1 and len(clip[0].last_norms) == 3
    assert all(math.isfinite(n) and n > 0 for n in clip[0].last_norms), clip[0].last_norms

    assert files_left(ckpt_dir) == ["model.pt"]
    saved = load_tiny(ckpt_dir / "model.pt")
    changed = {k for k in start if not torch.equal(saved[k], start[k])}
    assert changed and changed <= trainable, sorted(changed - trainable)
    sam = torch.load(str(sam_checkpoint), map_location="cpu", weights_only=True)
    for key in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "pos_embed"):
        assert f"image_encoder.{key}" not in trainable
        assert torch.equal(saved[f"image_encoder.{key}"], sam[f"image_encoder.{key}"]), key


def test_train_missing_sam_checkpoint(configs, dataset, tmp_path):
    missing = tmp_path / "sam_vit_b_01ec64.pth"
    ckpt_dir = tmp_path / "ckpt"
    text = expect_failure(
        lambda: make_workflow(
            configs,
            "train.json",
            "train",
            ckpt_dir=str(ckpt_dir),
            sam_checkpoint=str(missing),
            **data_override(dataset),
        ),
        ckpt_dir,
        "InputNotFoundError",  # a FileNotFoundError
        str(missing),
        "SAM ViT-B checkpoint not found",
        "github.com/facebookresearch/segment-anything",
    )
    assert "Download SAM ViT-B" in text


def test_multi_gpu_train_torchrun_gloo(configs, repo_root, dataset, sam_checkpoint, tmp_path):
    """Two CPU processes with DistributedDataParallel over gloo on 127.0.0.1; they must finish by themselves."""
    ckpt_dir = tmp_path / "ckpt"
    tiny = tmp_path / "tiny.json"  # the overrides as a third config file: nested values need no CLI quoting
    tiny.write_text(
        json.dumps(
            {
                **data_override(dataset),
                "ckpt_dir": str(ckpt_dir),
                "epochs": 1,
                "output_dir": str(tmp_path / "runs"),
                "sam_checkpoint": str(sam_checkpoint),
            }
        )
    )
    output = run_bundle_torchrun([configs / "train.json", configs / "multi_gpu_train.json", tiny], {}, repo_root)
    assert "val_mean_dice" in output
    assert files_left(ckpt_dir) == ["model.pt"]
    load_tiny(ckpt_dir / "model.pt")


# --------------------------------------------------------------------------------------------------------- evaluate
def run_evaluate(configs: Path, dataset: Path, weights: Path, out: Path, datalist="datalist.json", **override):
    """evaluate.json on the test list; returns the workflow and, per case, the pred/label shapes and points."""
    wf = make_workflow(
        configs,
        ["inference.json", "evaluate.json"],
        "infer",
        output_dir=str(out),
        ckpt_path=str(weights),
        target_name="pancreas",
        **{**data_override(dataset, datalist), **override},
    )
    wf.initialize()
    assert checked_properties(wf) == []
    seen = run_recording_cases(wf, lambda b, o: (tuple(o["pred"].shape), tuple(o["label"].shape), b["points"].tolist()))
    return wf, seen


def test_evaluate(configs, dataset, tiny_weights, ct3, tmp_path):
    image, _ = ct3
    _, seen = run_evaluate(configs, dataset, tiny_weights, tmp_path / "eval1")
    assert files_left(tmp_path / "eval1") == ["metrics.csv", "metrics.json"]
    rows = read_metrics_rows(tmp_path / "eval1")
    assert sorted(r["protocol"] for r in rows) == sorted(PROTOCOLS)
    assert {(r["case"], r["structure"], r["label"]) for r in rows} == {("case_a", "pancreas", str(PANCREAS))}
    assert all(0.0 <= float(r["dice"]) <= 1.0 and 0.0 <= float(r["nsd"]) <= 1.0 for r in rows), rows
    report = json.loads((tmp_path / "eval1" / "metrics.json").read_text())
    assert sorted(report["summary"]) == sorted(PROTOCOLS) and report["tolerance_mm"] == 5.0

    # the report gets the prediction on the label's native grid: one channel per protocol
    ((pred_shape, label_shape, points),) = seen
    assert pred_shape == (len(PROTOCOLS), *image.shape) and label_shape == (1, *image.shape) == (1, 122, 101, 30)
    assert len(points) == 10

    # seeded points: a second run repeats them and the rows; another seed moves them
    _, seen2 = run_evaluate(configs, dataset, tiny_weights, tmp_path / "eval2")
    assert seen2 == seen and read_metrics_rows(tmp_path / "eval2") == rows
    _, seen3 = run_evaluate(configs, dataset, tiny_weights, tmp_path / "eval3", point_seed=1)
    assert seen3[0][2] != points


def test_evaluate_automatic_variant(configs, dataset, ct3, tmp_path):
    """evaluate.json + evaluate_auto.json: prompt-free network, sliding windows of foreground probability over the
    whole volume (at 3 mm here, to keep the window count small), one "automatic" row per case on the label's native
    grid."""
    torch.manual_seed(0)
    weights = tmp_path / "model_auto.pt"
    torch.save(build_sam3d_adapter(**TINY_SIZES, promptable=False).state_dict(), str(weights))
    out = tmp_path / "eval"
    wf = make_workflow(
        configs,
        ["inference.json", "evaluate.json", "evaluate_auto.json"],
        "infer",
        output_dir=str(out),
        ckpt_path=str(weights),
        target_name="pancreas",
        **{
            **data_override(dataset),
            "network_def": {**TINY_NET, "promptable": False},
            "target_spacing": [3.0, 3.0, 3.0],
        },
    )
    wf.initialize()
    assert checked_properties(wf) == []
    preds = []
    wf.evaluator.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: preds.extend(o["pred"] for o in e.state.output)
    )
    wf.run()
    wf.finalize()
    image, _ = ct3
    assert [tuple(p.shape) for p in preds] == [(1, *image.shape)]
    assert set(torch.unique(preds[0]).tolist()) <= {0.0, 1.0}
    rows = read_metrics_rows(out)
    assert [(r["case"], r["protocol"]) for r in rows] == [("case_a", "automatic")]


def test_evaluate_label_without_target(configs, totalseg_dir, tiny_weights, ct3, tmp_path):
    image, label = ct3
    data = tmp_path / "data"
    for folder in ("imagesTr", "labelsTr"):
        (data / folder).mkdir(parents=True)
    (data / "imagesTr" / "no_pancreas.nii.gz").symlink_to(totalseg_dir / "ct_abdomen_3mm.nii.gz")
    no_pancreas = data / "labelsTr" / "no_pancreas.nii.gz"
    nib.save(nib.Nifti1Image(np.where(label == PANCREAS, 0, label).astype(np.uint8), image.affine), str(no_pancreas))
    write_datalist(data / "datalist.json", [], [], ["no_pancreas"])
    out = tmp_path / "eval"
    expect_failure(
        lambda: make_workflow(
            configs,
            ["inference.json", "evaluate.json"],
            "infer",
            output_dir=str(out),
            ckpt_path=str(tiny_weights),
            **data_override(data),
        ),
        out,
        "RandVolumePointsd",
        str(no_pancreas),
        "no foreground",
    )


# -------------------------------------------------------------------------------------------------------- inference
def expected_cube_box(points: np.ndarray, spacing: float, target: float, roi: int) -> list[int]:
    """Inclusive box, in file voxels, that the ``roi`` cube of ``target`` mm voxels around the points covers.

    Positions are in mm from the volume's corner: file voxel ``j`` is centred at ``(j + 0.5) * spacing``, voxel
    ``k`` of the resampled grid at ``(k + 0.5) * target``. The cube starts ``roi // 2`` voxels before
    ``floor((max + min) / 2)`` of the points' resampled indices; a file voxel is in if its centre lies within the
    span of the cube's voxel centres (trilinear resizing back then reads cube values only).
    """
    resampled = (points + 0.5) * spacing / target - 0.5
    centre = np.floor((resampled.max(0) + resampled.min(0)) / 2)
    first_mm, last_mm = (centre - roi // 2 + 0.5) * target, (centre - roi // 2 + roi - 0.5) * target
    lo, hi = np.ceil(first_mm / spacing - 0.5), np.floor(last_mm / spacing - 0.5)
    return [int(v) for v in lo] + [int(v) for v in hi]


def test_inference_cube_geometry(configs, totalseg_dir, ct3, cube_weights, tmp_path):
    """A fake network that predicts its whole patch: the output is the patch mapped back onto the file's grid."""
    image, label = ct3
    pancreas = np.argwhere(label == PANCREAS)
    points = pancreas[[0, len(pancreas) // 2, -1]]  # file voxel indices on the pancreas
    out = tmp_path / "out"
    wf = make_workflow(
        configs,
        "inference.json",
        "infer",
        output_dir=str(out),
        ckpt_path=str(cube_weights),
        network_def={"_target_": "workflow_utils.ForegroundCube"},
        roi_size=ROI,
        input_dict={"image": str(totalseg_dir / "ct_abdomen_3mm.nii.gz"), "points": points.tolist()},
    )
    wf.initialize()
    assert checked_properties(wf) == []
    assert isinstance(wf.parser.get_parsed_content("network"), ForegroundCube)
    wf.run()
    wf.finalize()

    assert files_left(out) == ["ct_abdomen_3mm_seg.nii.gz"]
    seg = nib.load(str(out / "ct_abdomen_3mm_seg.nii.gz"))
    pred = np.asarray(seg.dataobj)
    assert pred.shape == image.shape and pred.dtype == np.uint8
    assert np.allclose(seg.affine, image.affine, atol=1e-4)
    assert set(np.unique(pred).tolist()) == {0, 1}
    box = box_of(pred)
    lo, hi = box[:3], box[3:]
    assert pred[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1].all()  # a filled box
    expected = expected_cube_box(points.astype(np.float64), spacing=3.0, target=1.0, roi=ROI)
    assert np.abs(np.array(box) - expected).max() <= 1, (box, expected)
    assert all(b - a + 1 in (5, 6) for a, b in zip(lo, hi))  # 16 mm in 3 mm voxels


def test_inference_point_outside(configs, totalseg_dir, cube_weights, tmp_path):
    out = tmp_path / "out"
    path = str(totalseg_dir / "ct_abdomen_3mm.nii.gz")
    expect_failure(
        lambda: make_workflow(
            configs,
            "inference.json",
            "infer",
            output_dir=str(out),
            ckpt_path=str(cube_weights),
            roi_size=ROI,
            network_def={"_target_": "workflow_utils.ForegroundCube"},
            input_dict={"image": path, "points": [[50, 60, 10], [122, 50, 10]]},
        ),
        out,
        "'points'",
        "ct_abdomen_3mm.nii.gz",
        "point #1 [122.0, 50.0, 10.0]",
        "outside the image",
        "[121, 100, 29]",
    )


def test_inference_tiny_network(configs, totalseg_dir, ct3, tiny_weights, tmp_path):
    """The tiny real network end to end: output on the file's grid, inside the patch around the point."""
    image, label = ct3
    point = np.argwhere(label == PANCREAS)[len(np.argwhere(label == PANCREAS)) // 2]
    out = tmp_path / "out"
    run_inference(
        configs,
        out,
        {"image": str(totalseg_dir / "ct_abdomen_3mm.nii.gz"), "points": [point.tolist()]},
        ckpt_path=str(tiny_weights),
        network_def=TINY_NET,
        roi_size=ROI,
        output_label=PANCREAS,
    )
    assert files_left(out) == ["ct_abdomen_3mm_seg.nii.gz"]
    pred = np.asarray(nib.load(str(out / "ct_abdomen_3mm_seg.nii.gz")).dataobj)
    assert pred.shape == image.shape and set(np.unique(pred).tolist()) <= {0, PANCREAS}
    box = expected_cube_box(point[None].astype(np.float64), spacing=3.0, target=1.0, roi=ROI)
    outside = pred.copy()
    outside[box[0] - 1 : box[3] + 2, box[1] - 1 : box[4] + 2, box[2] - 1 : box[5] + 2] = 0
    assert not outside.any()


# ---------------------------------------------------------------------------------------------------------- export
def test_ckpt_export_automatic_variant(configs, tmp_path):
    """The prompt-free variant exports to TorchScript by tracing (``ckpt_export --use_trace``, with
    ``torch.jit.trace``'s re-trace graph comparison off: the decoder fills its concatenation in place, which that
    check reports as a divergence); the traced module gives the same outputs at any batch size."""
    sizes = {**TINY_SIZES, "promptable": False}
    torch.manual_seed(0)
    net = build_sam3d_adapter(**sizes).eval()
    weights = save_weights(tmp_path, net.state_dict())
    exported = tmp_path / "model_auto.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(exported),
        ckpt_file=str(weights),
        meta_file=str(configs / "metadata.json"),
        config_file=[str(configs / f) for f in ("inference.json", "evaluate.json", "evaluate_auto.json")],
        network_def={"_target_": "common.networks.sam3d_adapter.build_sam3d_adapter", **sizes},
        use_trace=True,
        input_shape=[1, 1, ROI, ROI, ROI],
        converter_kwargs={"check_trace": False},
    )
    extra = {"metadata.json": ""}
    scripted = torch.jit.load(str(exported), _extra_files=extra)
    assert json.loads(extra["metadata.json"]) == json.loads((configs / "metadata.json").read_text())
    for batch in (1, 2):
        x = torch.rand(batch, 1, ROI, ROI, ROI)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), net(x))


def test_ckpt_export_promptable_network_is_unsupported(configs, tiny_weights, tmp_path):
    """ckpt_export traces with the image only and cannot script the shifted-window encoder: documented as
    unsupported for the point-prompted network (README, "TorchScript")."""
    with pytest.raises(Exception):
        ckpt_export(
            net_id="network_def",
            filepath=str(tmp_path / "model.ts"),
            ckpt_file=str(tiny_weights),
            meta_file=str(configs / "metadata.json"),
            config_file=str(configs / "inference.json"),
            network_def=TINY_NET,
        )
    assert not (tmp_path / "model.ts").exists()
