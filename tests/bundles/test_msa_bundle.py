"""msa bundle (Medical SAM Adapter) through MONAI's bundle machinery, with a tiny network (``TINY_SIZES``, 16^3
crops of 16 slices) on the real 3 mm CT volume of ``../shared/data/totalseg_ct`` and its seven organs: training (SAM
initialisation, frozen weights, the loss going down), torchrun on two CPU processes, per-organ evaluation reports,
and the inference geometry with a fake network that predicts exactly the slices it was clicked on.

Points are given as the bundle's users give them: voxel indices ``[x, y, z]`` of the file as stored on disk.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import verify_net_in_out
from workflow_utils import (
    ClickSlices,
    checked_properties,
    expect_failure,
    files_left,
    informative_positions,
    load_strict,
    make_workflow,
    read_metrics_rows,
    run_bundle_torchrun,
    run_recording_cases,
    save_weights,
)

from common.networks.msa import TINY_SIZES, build_msa
from common.networks.sam import build_sam_vit

ORGANS = ["spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "pancreas"]
STRUCTURES = list(range(1, len(ORGANS) + 1))
LIVER = 5
ROI = 16
# the bundle's own network at tiny sizes (decoder adapters and the upstream flags as the config sets them)
TINY_NET = {
    "_target_": "common.networks.msa.build_msa",
    "num_slices": "@num_slices",
    "depth_grouping": "@depth_grouping",
    "pad_before_norm": "@pad_before_norm",
    "decoder_adapters": "@decoder_adapters",
    "decoder_efficientsam_block": "@upstream_decoder_block",
    **TINY_SIZES,
}
TINY = {"network_def": TINY_NET, "roi_size": ROI, "structures": STRUCTURES, "num_workers": 0}
FAKE_NET = {"_target_": "workflow_utils.ClickSlices"}


# ---------------------------------------------------------------------------------------------------------- fixtures
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/bundles/conftest.py


@pytest.fixture(scope="module")
def configs(repo_root) -> Path:
    """``bundles/msa/configs`` (overrides the medsam folder of tests/bundles/conftest.py)."""
    return repo_root / "bundles" / "msa" / "configs"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, totalseg_dir) -> Path:
    """imagesTr/labelsTr links to the 3 mm volume and its labels (case_a), and ``datalist.json`` where case_a
    trains and validates."""
    root = tmp_path_factory.mktemp("msa_data")
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir()
    (root / "imagesTr" / "case_a.nii.gz").symlink_to(totalseg_dir / "ct_abdomen_3mm.nii.gz")
    (root / "labelsTr" / "case_a.nii.gz").symlink_to(totalseg_dir / "ct_abdomen_3mm_labels.nii.gz")
    entry = {"image": "imagesTr/case_a.nii.gz", "label": "labelsTr/case_a.nii.gz"}
    (root / "datalist.json").write_text(json.dumps({"training": [entry], "validation": [entry]}))
    return root


def data_override(dataset: Path) -> dict:
    return {"dataset_dir": str(dataset), "datalist_file": str(dataset / "datalist.json"), **TINY}


@pytest.fixture(scope="module")
def sam_checkpoint(tmp_path_factory) -> Path:
    """A tiny SAM checkpoint in the official layout (random), with informative (non-zero) position tables."""
    torch.manual_seed(1)
    state = informative_positions(build_sam_vit(**TINY_SIZES).state_dict())
    return save_weights(tmp_path_factory.mktemp("sam"), state, "sam_tiny.pth")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """A random tiny MSA ``model.pt`` (plain state dict)."""
    torch.manual_seed(0)
    return save_weights(
        tmp_path_factory.mktemp("msa_weights"),
        build_msa(num_slices=ROI, decoder_adapters=True, **TINY_SIZES).state_dict(),
    )


@pytest.fixture(scope="module")
def fake_weights(tmp_path_factory) -> Path:
    return save_weights(tmp_path_factory.mktemp("fake_weights"), ClickSlices().state_dict())


def load_tiny(path: Path) -> dict[str, torch.Tensor]:
    """A saved ``model.pt``: must be a plain state dict that loads strictly into the tiny network."""
    return load_strict(path, build_msa(num_slices=ROI, decoder_adapters=True, **TINY_SIZES))


# ---------------------------------------------------------------------------------------------------- network, meta
def test_metadata_matches_config(configs):
    meta = json.loads((configs / "metadata.json").read_text())["network_data_format"]
    inference = json.loads((configs / "inference.json").read_text())
    assert inference["num_slices"] == "@roi_size"
    shape = [inference["roi_size"]] * 3
    assert meta["inputs"]["image"]["spatial_shape"] == meta["inputs"]["condition"]["spatial_shape"] == shape
    assert meta["outputs"]["pred"]["spatial_shape"] == shape
    assert meta["outputs"]["pred"]["num_channels"] == meta["inputs"]["condition"]["num_channels"] == 1


def test_bundle_network_has_the_decoder_adapters_by_default(configs):
    """inference.json builds the paper's network (decoder adapters on: 14,941,156 trainable of 104,618,288, as the
    metadata says); decoder_adapters false gives the 0.2 network (14,709,732 of 104,386,864)."""
    from monai.bundle import ConfigParser

    def counts(**override) -> tuple[int, int]:
        parser = ConfigParser()
        parser.read_config(str(configs / "inference.json"))
        parser.update({"network_def#device": "meta", **override})
        net = parser.get_parsed_content("network_def")
        return sum(p.numel() for p in net.parameters()), sum(p.numel() for p in net.parameters() if p.requires_grad)

    assert counts() == (104_618_288, 14_941_156)
    assert counts(decoder_adapters=False) == (104_386_864, 14_709_732)
    assert "14,941,156 of 104,618,288" in json.loads((configs / "metadata.json").read_text())["description"]


@pytest.mark.parametrize("config", ["inference.json", "train.json"])
def test_upstream_flags_reach_the_network(configs, config):
    """``pad_before_norm`` reaches every window block, ``upstream_decoder_block`` every two-way block,
    ``depth_grouping`` every depth branch; each is off by default."""
    from monai.bundle import ConfigParser

    def network(**override):
        parser = ConfigParser()
        parser.read_config(str(configs / config))
        parser.update({"network_def#device": "meta", **override})
        return parser.get_parsed_content("network_def")

    def flags(net) -> set[tuple[str, object]]:
        blocks = [b for b in net.image_encoder.blocks if b.window_size > 0]
        return {
            *{("pad_before_norm", b.pad_before_norm) for b in blocks},
            *{("efficientsam", layer.efficientsam_self_attention) for layer in net.mask_decoder.transformer.layers},
            *{("grouping", m.grouping) for m in net.modules() if type(m).__name__ == "DepthAttention"},
        }

    assert flags(network()) == {("pad_before_norm", False), ("efficientsam", False), ("grouping", "per_token")}
    upstream = network(pad_before_norm=True, upstream_decoder_block=True, depth_grouping="published")
    assert flags(upstream) == {("pad_before_norm", True), ("efficientsam", True), ("grouping", "published")}


def test_sam_keys_like_upstream_reaches_the_sam_loader(configs, dataset, sam_checkpoint, tmp_path):
    """train.json's ``sam_keys_like_upstream``: the 32-key pattern the released loader skips stays at initialisation
    (rel-pos tables zero), every other SAM key loads."""
    from common.networks.msa import UPSTREAM_SKIPPED_SAM_KEYS

    sam = torch.load(str(sam_checkpoint), map_location="cpu", weights_only=True)
    for like_upstream in (False, True):
        wf = train_workflow(
            configs, dataset, tmp_path / str(like_upstream), init_from_sam=True, sam_checkpoint=str(sam_checkpoint),
            sam_keys_like_upstream=like_upstream, epochs=1, val_interval=1,
        )  # fmt: skip
        wf.initialize()
        state = wf.parser.get_parsed_content("network").state_dict()
        skipped = {k for k in sam if UPSTREAM_SKIPPED_SAM_KEYS.search(k)}
        assert skipped and {k for k in sam if not torch.equal(state[k], sam[k])} == (
            skipped if like_upstream else set()
        )


def test_verify_net_in_out(configs):
    shapes = {
        f"_meta_#network_data_format#{part}#spatial_shape": [ROI] * 3
        for part in ("inputs#image", "inputs#condition", "outputs#pred")
    }
    condition = torch.zeros(1, 1, ROI, ROI, ROI)
    condition[0, 0, 5, 7, :8] = 1.0
    condition[0, 0, 2, 3, 8:] = -1.0
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(configs / "metadata.json"),
        config_file=str(configs / "inference.json"),
        device="cpu",
        network_def=TINY_NET,
        roi_size=ROI,
        extra_forward_args={"condition": condition},
        **shapes,
    )


# ------------------------------------------------------------------------------------------------------------ train
def train_workflow(configs: Path, dataset: Path, tmp_path: Path, **override):
    return make_workflow(
        configs,
        "train.json",
        "train",
        ckpt_dir=str(tmp_path / "ckpt"),
        output_dir=str(tmp_path / "runs"),
        num_samples=2,
        **{**data_override(dataset), **override},
    )


def record_losses(wf) -> list[float]:
    losses: list[float] = []
    wf.trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda engine: losses.append(float(engine.state.output[0]["loss"]))
    )
    return losses


def test_train_from_sam(configs, dataset, sam_checkpoint, tmp_path):
    """2 epochs from the tiny SAM checkpoint, validated at the end: SAM stays frozen, adapters and decoder learn."""
    wf = train_workflow(
        configs, dataset, tmp_path, init_from_sam=True, sam_checkpoint=str(sam_checkpoint), epochs=2, val_interval=2
    )
    wf.initialize()
    assert checked_properties(wf) == []
    net = wf.parser.get_parsed_content("network")
    start = {k: v.clone() for k, v in net.state_dict().items()}
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    losses = record_losses(wf)
    wf.run()
    wf.finalize()

    assert wf.trainer.state.epoch == 2 and len(losses) == 2 and all(math.isfinite(v) for v in losses), losses
    dice = wf.parser.get_parsed_content("validate#evaluator").state.metrics["val_mean_dice"]
    assert 0.0 <= dice <= 1.0, dice

    assert files_left(tmp_path / "ckpt") == ["model.pt"]
    saved = load_tiny(tmp_path / "ckpt" / "model.pt")
    sam = torch.load(str(sam_checkpoint), map_location="cpu", weights_only=True)
    adapters = {k for k in saved if ".adapters." in k}
    assert {k for k in saved if k not in adapters} == set(sam)  # every non-adapter key comes from SAM
    assert trainable == adapters | {k for k in saved if k.startswith("mask_decoder.")}
    kinds = {(k.split(".")[0], k.split(".adapters.")[1].split(".")[0]) for k in adapters}
    assert kinds == {
        *[("image_encoder", kind) for kind in ("after_attn", "parallel_mlp", "parallel_attn")],
        *[("mask_decoder", kind) for kind in ("after_token_to_image", "parallel_mlp", "after_image_to_token")],
    }  # the bundle's default: the paper's decoder adapters too, and they train (below)
    for key in ("image_encoder.blocks.0.attn.rel_pos_h", "image_encoder.blocks.1.attn.rel_pos_w"):
        assert sam[key].abs().sum() > 0 and torch.equal(saved[key], sam[key]), key
    for key, value in sam.items():
        if key not in trainable:  # the frozen encoder, neck and prompt encoder: still the checkpoint's
            assert torch.equal(saved[key], value), key
    changed = {k for k in saved if not torch.equal(saved[k], start[k])}
    assert adapters <= changed, sorted(adapters - changed)
    assert {k for k in changed if k.startswith("mask_decoder.")}, "the mask decoder did not train"
    assert changed <= trainable, sorted(changed - trainable)


def test_train_missing_sam_checkpoint(configs, dataset, tmp_path):
    missing = tmp_path / "sam_vit_b_01ec64.pth"
    expect_failure(
        lambda: train_workflow(configs, dataset, tmp_path, sam_checkpoint=str(missing)),
        tmp_path / "ckpt",
        "InputNotFoundError",  # a FileNotFoundError
        str(missing),
        "SAM ViT-B checkpoint not found",
        "Download SAM ViT-B",
        "github.com/facebookresearch/segment-anything",
    )


def test_train_loss_decreases(configs, dataset, tmp_path):
    """60 iterations (one volume, two crops each) at a 10x learning rate: the loss goes down. Without validation
    (``val_interval`` past the end) to keep it short; test_train_from_sam covers validation."""
    epochs = 60
    wf = train_workflow(
        configs, dataset, tmp_path, init_from_sam=False, epochs=epochs, val_interval=epochs + 1, learning_rate=1e-3
    )
    wf.initialize()
    losses = record_losses(wf)
    started = time.perf_counter()
    wf.run()
    wf.finalize()
    elapsed = time.perf_counter() - started
    first, last = float(np.mean(losses[:10])), float(np.mean(losses[-10:]))
    print(
        f"\nmsa tiny training: {len(losses)} iterations in {elapsed:.1f} s, mean loss of the first 10 {first:.4f}, "
        f"of the last 10 {last:.4f}"
    )
    assert len(losses) == epochs and all(math.isfinite(v) for v in losses)
    assert last < 0.95 * first, (first, last)


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
                "val_interval": 1,
                "num_samples": 2,
                "output_dir": str(tmp_path / "runs"),
                "sam_checkpoint": str(sam_checkpoint),
            }
        )
    )
    output = run_bundle_torchrun(
        [configs / "train.json", configs / "multi_gpu_train.json", tiny], {}, repo_root, timeout=240
    )
    assert "val_mean_dice" in output
    assert files_left(ckpt_dir) == ["model.pt"]
    load_tiny(ckpt_dir / "model.pt")


# --------------------------------------------------------------------------------------------------------- evaluate
def evaluate_workflow(configs: Path, dataset: Path, weights: Path, out: Path, **override):
    return make_workflow(
        configs,
        ["inference.json", "evaluate.json"],
        "infer",
        output_dir=str(out),
        ckpt_path=str(weights),
        structure_names=ORGANS,
        **{**data_override(dataset), **override},
    )


def run_evaluate(configs: Path, dataset: Path, weights: Path, out: Path):
    """evaluate.json on the validation list; returns, per case, the pred/label shapes, pred values and click map."""
    wf = evaluate_workflow(configs, dataset, weights, out)
    wf.initialize()
    assert checked_properties(wf) == []
    seen = run_recording_cases(
        wf,
        lambda b, o: (
            tuple(o["pred"].shape),
            tuple(o["label"].shape),
            set(torch.unique(o["pred"]).tolist()),
            torch.as_tensor(b["clicks"]).clone(),
        ),
    )
    return wf, seen


def test_evaluate(configs, dataset, tiny_weights, ct3, tmp_path):
    image, _ = ct3
    _, seen = run_evaluate(configs, dataset, tiny_weights, tmp_path / "eval1")
    assert files_left(tmp_path / "eval1") == ["metrics.csv", "metrics.json"]
    rows = read_metrics_rows(tmp_path / "eval1")
    assert [(r["case"], r["protocol"], r["structure"], r["label"]) for r in rows] == [
        ("case_a", "clicks", name, str(value)) for name, value in zip(ORGANS, STRUCTURES)
    ]
    assert all(0.0 <= float(r["dice"]) <= 1.0 and 0.0 <= float(r["nsd"]) <= 1.0 for r in rows), rows
    report = json.loads((tmp_path / "eval1" / "metrics.json").read_text())
    assert sorted(report["summary"]["clicks"]) == sorted(ORGANS) and report["tolerance_mm"] == 2.0

    # the report gets the prediction on the label's native grid: one binary channel per organ
    ((pred_shape, label_shape, values, clicks),) = seen
    assert pred_shape == label_shape == (len(ORGANS), *image.shape) == (7, 122, 101, 30)
    assert values <= {0.0, 1.0}
    # the clicks (on the resampled grid): one per slice and organ, positive on slices holding the organ
    assert clicks.shape[0] == len(ORGANS) and clicks.shape[-1] > image.shape[-1]
    assert torch.equal(clicks.ne(0).sum((1, 2)), torch.ones(len(ORGANS), clicks.shape[-1], dtype=torch.long))
    assert all(clicks[s].gt(0).any() for s in range(len(ORGANS)))

    # seeded clicks: a second run repeats them and the rows
    _, seen2 = run_evaluate(configs, dataset, tiny_weights, tmp_path / "eval2")
    assert torch.equal(seen2[0][3], clicks) and read_metrics_rows(tmp_path / "eval2") == rows
    other = evaluate_workflow(configs, dataset, tiny_weights, tmp_path / "eval3", click_seed=1)
    other.initialize()
    assert not torch.equal(other.parser.get_parsed_content("dataset")[0]["clicks"], clicks)


# -------------------------------------------------------------------------------------------------------- inference
def inference_workflow(configs: Path, out: Path, weights: Path, input_dict: dict, **override):
    return make_workflow(
        configs,
        "inference.json",
        "infer",
        output_dir=str(out),
        ckpt_path=str(weights),
        roi_size=ROI,
        network_def=FAKE_NET,
        input_dict=input_dict,
        **override,
    )


def expected_slices(
    file_affine: np.ndarray, array_affine: np.ndarray, array_depth: int, points: np.ndarray, depth: int
):
    """File slices that a prediction of exactly the clicked slices of the resampled array maps back onto.

    A point's file index goes through both affines to the array's z index (kept inside its ``array_depth`` slices),
    rounded to the clicked slice. Each file slice ``k`` sits at array position ``z_k``; linear interpolation gives it
    ``1 - |z_k - c|`` from a clicked slice ``c``, so it passes the 0.5 threshold when ``|z_k - c| < 0.5`` (``sure``)
    and is a tie at exactly 0.5 (``maybe``: 3 mm -> 2 mm puts every odd file slice half-way between two array
    slices). Returns ``(clicked array slices, sure, maybe)``.
    """
    to_array = np.linalg.inv(array_affine) @ file_affine
    clicked = {int(np.round(np.clip(to_array[2, :3] @ p + to_array[2, 3], 0, array_depth - 1))) for p in points}
    z = np.array([to_array[2, :3] @ [*points[0][:2], k] + to_array[2, 3] for k in range(depth)])
    distance = np.min([np.abs(z - c) for c in clicked], axis=0)
    sure = {int(k) for k in np.flatnonzero(distance < 0.5 - 1e-6)}
    maybe = {int(k) for k in np.flatnonzero(np.abs(distance - 0.5) <= 1e-6)}
    return clicked, sure, maybe


def test_inference_clicked_slices(configs, totalseg_dir, ct3, fake_weights, tmp_path):
    """A fake network that predicts the slices it is clicked on: the output is those slices mapped back onto the
    file's grid (3 mm slices -> 2 mm -> 3 mm with linear interpolation and a 0.5 threshold)."""
    image, label = ct3
    file_slices = [10, 12]
    points = np.array([np.append(np.argwhere(label[:, :, k] == LIVER).mean(0).round(), k) for k in file_slices])
    assert all(label[int(x), int(y), int(z)] == LIVER for x, y, z in points)
    out = tmp_path / "out"
    wf = inference_workflow(
        configs,
        out,
        fake_weights,
        output_label=LIVER,
        input_dict={
            "image": str(totalseg_dir / "ct_abdomen_3mm.nii.gz"),
            "points": points.tolist(),
            "point_labels": [1, 1],
        },
    )
    wf.initialize()
    assert checked_properties(wf) == []
    assert isinstance(wf.parser.get_parsed_content("network"), ClickSlices)
    item = wf.parser.get_parsed_content("dataset")[0]  # the preprocessed input: resampled image and click map
    assert np.allclose(np.abs(np.diag(item["image"].affine.numpy())[:3]), [1.5, 1.5, 2.0])
    clicked, sure, maybe = expected_slices(
        image.affine, item["image"].affine.numpy(), item["image"].shape[-1], points, image.shape[2]
    )
    assert set(torch.nonzero(item["clicks"][0])[:, 2].tolist()) == clicked
    assert set(file_slices) <= sure and 11 not in sure | maybe  # 3 mm apart -> 1.5 array slices, not adjacent
    wf.run()
    wf.finalize()

    assert files_left(out) == ["ct_abdomen_3mm_seg.nii.gz"]
    seg = nib.load(str(out / "ct_abdomen_3mm_seg.nii.gz"))
    pred = np.asarray(seg.dataobj)
    assert pred.shape == image.shape and pred.dtype == np.uint8
    assert np.allclose(seg.affine, image.affine, atol=1e-4)
    assert set(np.unique(pred).tolist()) == {0, LIVER}
    found = {int(k) for k in np.flatnonzero(pred.any((0, 1)))}
    assert sure <= found <= sure | maybe, (found, sure, maybe)
    assert all((pred[:, :, k] == LIVER).all() for k in sure)  # whole slices, as the fake network predicts


def test_inference_point_outside(configs, totalseg_dir, fake_weights, tmp_path):
    out = tmp_path / "out"
    path = str(totalseg_dir / "ct_abdomen_3mm.nii.gz")
    expect_failure(
        lambda: inference_workflow(
            configs,
            out,
            fake_weights,
            input_dict={"image": path, "points": [[50, 60, 10], [122, 50, 10]], "point_labels": [1, 1]},
        ),
        out,
        "'points'",
        "ct_abdomen_3mm.nii.gz",
        "point #1 [122.0, 50.0, 10.0]",
        "outside the image",
        "[121, 100, 29]",
    )


def test_inference_point_labels_mismatch(configs, totalseg_dir, fake_weights, tmp_path):
    out = tmp_path / "out"
    path = str(totalseg_dir / "ct_abdomen_3mm.nii.gz")
    expect_failure(
        lambda: inference_workflow(
            configs,
            out,
            fake_weights,
            input_dict={"image": path, "points": [[50, 60, 10], [55, 60, 12]], "point_labels": [1]},
        ),
        out,
        "'point_labels'",
        "ct_abdomen_3mm.nii.gz",
        "one label per point (2 points)",
        "got [1]",
    )
