"""samus_busi bundle (SAMUS / HQ-SAMUS) through MONAI's bundle machinery, with tiny networks.

No BUSI offline: training and evaluation run on a seeded synthetic set in BUSI's folder layout
(``common.data.synthetic_ultrasound``: speckle, hypoechoic lesions with posterior shadowing or enhancement),
which proves the pipeline (datalist, merged masks, augmentation, clicks, loss, validation, checkpoints) learns the
task's shape, not BUSI accuracy. Inference runs on the real ultrasound DICOMs of ``../shared/data/ultrasound``
(RGB and palette colour) and on raster files, with clicks and boxes in the file's pixels as a viewer shows them.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from PIL import Image
from workflow_utils import (
    checked_properties,
    expect_failure,
    files_left,
    informative_positions,
    load_strict,
    make_workflow,
    network_def,
    run_inference,
    save_weights,
    train_with_torchrun,
    verify_clicked_2d_net,
)

from common.data.synthetic_ultrasound import write_synthetic_busi
from common.data.ultrasound import busi_datalist, split_datalist
from common.methods.samus import prompt_keys as samus_prompt_keys
from common.networks import samus
from tests.sam_reference import sam_shaped_for_samus

TINY = samus.TINY_SIZES
TINY_NET = network_def("common.networks.samus.build_samus", TINY)
TINY_LOW = 4 * TINY["image_size"] // TINY["patch_stride"]
TINY_CFG = {"network_def": {**TINY_NET, "hq": "@hq"}, "image_size": TINY["image_size"], "num_workers": 0}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/bundles/conftest.py


@pytest.fixture(scope="module")
def configs(repo_root) -> Path:
    return repo_root / "bundles" / "samus_busi" / "configs"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Synthetic BUSI layout (10 benign, 10 malignant, 2 normal at 48 x 64) and ``datalist.json``."""
    root = tmp_path_factory.mktemp("busi")
    write_synthetic_busi(str(root), per_group=10, size=(48, 64), seed=0)
    lists = split_datalist(busi_datalist(str(root)), (0.6, 0.2, 0.2), seed=0)
    (root / "datalist.json").write_text(json.dumps(lists))
    return root


def data_override(dataset: Path) -> dict:
    return {"dataset_dir": str(dataset), "datalist_file": str(dataset / "datalist.json"), **TINY_CFG}


@pytest.fixture(scope="module")
def sam_checkpoint(tmp_path_factory) -> Path:
    """A tiny SAM checkpoint shaped for the tiny SAMUS as SAM ViT-B is for SAMUS (kernel-8 patches, 16 x 16 table)."""
    torch.manual_seed(1)
    sam = sam_shaped_for_samus(TINY)
    return save_weights(tmp_path_factory.mktemp("sam"), informative_positions(sam.state_dict()), "sam_tiny.pth")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_weights(tmp_path_factory.mktemp("samus_weights"), samus.build_samus(**TINY).state_dict())


# ---------------------------------------------------------------------------------------------------- network, meta
def test_verify_net_in_out(configs):
    verify_clicked_2d_net(configs, TINY_NET, TINY["image_size"], TINY_LOW)


def test_metadata_matches_published_sizes(configs):
    meta = json.loads((configs / "metadata.json").read_text())
    fmt = meta["network_data_format"]
    assert fmt["inputs"]["image"]["spatial_shape"] == [256, 256] and fmt["outputs"]["pred"]["spatial_shape"] == [
        128,
        128,
    ]
    assert "39,653,120 of 133,323,568" in meta["description"] and "40,724,224 of 134,394,672" in meta["description"]
    train = json.loads((configs / "train.json").read_text())
    assert (train["image_size"], train["low_res_size"], train["batch_size"], train["learning_rate"]) == (
        256,
        128,
        8,
        1e-4,
    )


# ------------------------------------------------------------------------------------------------------------ train
def train_workflow(configs: Path, dataset: Path, tmp_path: Path, files=("train.json",), **override):
    override.setdefault("network_def", {**TINY_CFG["network_def"], "hq_schedule": "@hq_schedule"})
    return make_workflow(
        configs,
        list(files),
        "train",
        **{
            "ckpt_dir": str(tmp_path / "ckpt"),
            "output_dir": str(tmp_path / "runs"),
            "batch_size": 4,
            "low_res_size": TINY_LOW,
            **data_override(dataset),
            **override,
        },
    )


def test_train_from_sam_keeps_sam_frozen(configs, dataset, sam_checkpoint, tmp_path):
    wf = train_workflow(configs, dataset, tmp_path, init_from_sam=True, sam_checkpoint=str(sam_checkpoint), epochs=2)
    wf.initialize()
    assert checked_properties(wf) == []
    net = wf.parser.get_parsed_content("network")
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    start = {k: v.clone() for k, v in net.state_dict().items()}
    wf.run()
    wf.finalize()
    assert files_left(tmp_path / "ckpt") == ["model.pt"]
    saved = load_strict(tmp_path / "ckpt" / "model.pt", samus.build_samus(**TINY))
    sam = torch.load(str(sam_checkpoint), map_location="cpu", weights_only=True)
    new = set(samus.new_module_keys(samus.build_samus(**TINY)))
    assert set(saved) - new == set(sam)
    g = TINY["global_attn_indexes"][0]
    assert trainable == new | {f"image_encoder.blocks.{g}.attn.rel_pos_{a}" for a in "hw"}
    for key, value in sam.items():
        if key not in trainable:
            assert torch.equal(saved[key], value), key  # frozen SAM weights stay the checkpoint's
    changed = {k for k in saved if not torch.equal(saved[k], start[k])}
    assert changed and changed <= trainable


def test_training_learns_on_synthetic_ultrasound(configs, tmp_path_factory, tmp_path):
    """64 px tiny SAMUS, decoder trained too (a random decoder cannot stay frozen), 25 epochs: validation Dice must
    rise well above its start."""
    root = tmp_path_factory.mktemp("busi_learn")
    write_synthetic_busi(str(root), per_group=24, size=(96, 128), seed=1, normal=0)
    (root / "datalist.json").write_text(json.dumps(split_datalist(busi_datalist(str(root)), (0.75, 0.25, 0.0), seed=0)))
    net = {
        **TINY_NET,
        "hq": "@hq",
        **dict(
            image_size=64, pos_embed_grid=32, cnn_channels=[8, 16], embed_dim=32, window_size=4, prompt_embed_dim=32
        ),
        "decoder_mlp_dim": 64,
        "train_mask_decoder": True,
    }
    wf = train_workflow(
        configs,
        root,
        tmp_path,
        network_def=net,
        image_size=64,
        low_res_size=64,
        init_from_sam=False,
        epochs=25,
        learning_rate=1e-3,
    )
    dice: list[float] = []
    wf.initialize()
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    evaluator.add_event_handler(Events.COMPLETED, lambda e: dice.append(e.state.metrics["val_mean_dice"]))
    wf.run()
    wf.finalize()
    assert len(dice) == 25
    assert max(dice) > 0.75 and max(dice) > dice[0] + 0.4, dice


def test_hq_only_schedule_from_trained_samus(configs, dataset, tiny_weights, tmp_path):
    """train_hq.json: starts from a trained SAMUS model.pt (never overwritten), trains only the HQ modules, saves
    model_hq.pt."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    before = (tiny_weights).read_bytes()
    wf = train_workflow(
        configs, dataset, tmp_path, files=("train.json", "train_hq.json"), samus_checkpoint=str(tiny_weights), epochs=2
    )
    wf.initialize()
    assert checked_properties(wf) == []
    net = wf.parser.get_parsed_content("network")
    start = {k: v.clone() for k, v in net.state_dict().items()}
    wf.run()
    wf.finalize()
    assert files_left(ckpt) == ["model_hq.pt"] and tiny_weights.read_bytes() == before
    saved = load_strict(ckpt / "model_hq.pt", samus.build_samus(hq=True, **TINY))
    changed = {k for k in saved if not torch.equal(saved[k], start[k])}
    assert changed and all(k.split(".")[1] in samus.HQ_MODULES for k in changed)
    trained = torch.load(str(tiny_weights), weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in trained.items())


def test_train_missing_sam_checkpoint(configs, dataset, tmp_path):
    expect_failure(
        lambda: train_workflow(configs, dataset, tmp_path, sam_checkpoint=str(tmp_path / "sam_vit_b_01ec64.pth")),
        tmp_path / "ckpt",
        "SAM ViT-B checkpoint",
        "sam_vit_b_01ec64.pth",
    )


def test_multi_gpu_train_torchrun_gloo(configs, repo_root, dataset, tmp_path):
    overrides = {
        **data_override(dataset),
        "epochs": 1,
        "batch_size": 2,
        "low_res_size": TINY_LOW,
        "init_from_sam": False,
    }
    train_with_torchrun(configs, repo_root, tmp_path, overrides, samus.build_samus(**TINY))


# --------------------------------------------------------------------------------------------------------- evaluate
@pytest.mark.parametrize("variant", ["click", "box", "hq_click_and_box"])
def test_evaluate_writes_per_image_report(configs, dataset, tmp_path, variant):
    """evaluate.json with the published click, the tight box, and HQ-SAMUS (inference_hq.json) with both."""
    hq = variant.startswith("hq")
    torch.manual_seed(0)
    weights = save_weights(tmp_path, samus.build_samus(hq=hq, **TINY).state_dict())
    out = tmp_path / "eval"
    files = ["inference.json", *(["inference_hq.json"] if hq else []), "evaluate.json"]
    prompt = variant.removeprefix("hq_")
    wf = make_workflow(
        configs,
        files,
        "infer",
        output_dir=str(out),
        ckpt_path=str(weights),
        upstream_row_hd=True,
        prompt=prompt,
        **data_override(dataset),
    )
    wf.initialize()
    assert checked_properties(wf) == []
    wf.run()
    wf.finalize()
    assert files_left(out) == ["metrics.csv", "metrics.json"]
    report = json.loads((out / "metrics.json").read_text())
    tests = json.loads((dataset / "datalist.json").read_text())["test"]
    assert [r["image"] for r in report["rows"]] == [Path(t["image"]).stem for t in tests]
    assert set(report["summary"]) == {"dice", "iou", "sensitivity", "specificity", "hd95_px", "upstream_row_hd"}
    assert all(0 <= r["dice"] <= 1 for r in report["rows"])
    assert wf.parser.get_parsed_content("evaluator#prepare_batch").extra_keys == samus_prompt_keys(prompt)


def test_train_with_box_prompts(configs, dataset, tmp_path):
    """prompt "box": the jittered training box reaches the network (upstream trains with clicks only)."""
    calls = []
    wf = train_workflow(configs, dataset, tmp_path, init_from_sam=False, epochs=1, prompt="box")
    wf.initialize()
    net = wf.parser.get_parsed_content("network")
    net.register_forward_pre_hook(lambda m, args, kwargs: calls.append(sorted(kwargs)), with_kwargs=True)
    wf.run()
    wf.finalize()
    assert calls and all(c == ["boxes"] for c in calls)


def test_upstream_points_only_mode_refuses_a_box_alone(configs, tiny_weights, tmp_path):
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(tmp_path / "f.png")
    out = tmp_path / "out"
    expect_failure(
        lambda: make_workflow(
            configs,
            "inference.json",
            "infer",
            output_dir=str(out),
            input_dict={"image": str(tmp_path / "f.png"), "boxes": [[2, 2, 30, 30]]},
            use_boxes=False,
            **{**infer_override(tiny_weights), "network_def": {**TINY_CFG["network_def"], "use_boxes": "@use_boxes"}},
        ),
        out,
        "ignores box prompts",
    )


# -------------------------------------------------------------------------------------------------------- inference
def infer_override(weights: Path) -> dict:
    return {"ckpt_path": str(weights), **TINY_CFG}


@pytest.mark.parametrize("name", ["US1_UNCR.dcm", "gdcm-US-ALOKA-16.dcm"])
@pytest.mark.parametrize("prompt", [{"points": [[330, 240]]}, {"boxes": [[250, 150, 420, 330]]}], ids=["click", "box"])
def test_inference_on_real_dicom_frames(configs, tiny_weights, tmp_path, ultrasound_dir, name, prompt):
    out = tmp_path / "out"
    wf = run_inference(configs, out, {"image": str(ultrasound_dir / name), **prompt}, **infer_override(tiny_weights))
    assert checked_properties(wf) == []
    assert files_left(out) == [f"{Path(name).stem}_seg.nii.gz"]
    img = nib.load(str(out / f"{Path(name).stem}_seg.nii.gz"))
    assert img.shape == (640, 480) and img.get_data_dtype() == np.uint8
    expected = [0.38265, 0.38265] if name.startswith("gdcm") else [1.0, 1.0]
    np.testing.assert_allclose(np.diag(img.affine)[:2], expected, atol=1e-4)
    assert set(np.unique(np.asarray(img.dataobj)).tolist()) <= {0, 1}


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_inference_on_raster_writes_png_of_the_input_size(configs, tiny_weights, tmp_path, suffix):
    frame = (np.random.default_rng(0).random((45, 70)) * 255).astype(np.uint8)  # (H, W)
    path = tmp_path / f"frame{suffix}"
    Image.fromarray(frame).save(path)
    out = tmp_path / "out"
    run_inference(
        configs,
        out,
        {"image": str(path), "points": [[60, 40]], "boxes": [[2, 3, 30, 20]], "box_labels": [2]},
        **infer_override(tiny_weights),
    )
    assert files_left(out) == ["frame_seg.png"]
    mask = np.asarray(Image.open(out / "frame_seg.png"))
    assert mask.shape == (45, 70) and set(np.unique(mask).tolist()) <= {0, 1, 2}


def test_inference_on_a_nifti_frame_keeps_its_affine(configs, tiny_weights, tmp_path):
    affine = np.array([[0.2, 0, 0, -12.0], [0, 0.25, 0, 5.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])
    frame = (np.random.default_rng(1).random((70, 45)) * 1000).astype(np.int16)  # (X, Y), not 8-bit
    nib.save(nib.Nifti1Image(frame, affine), str(tmp_path / "frame.nii.gz"))
    out = tmp_path / "out"
    run_inference(
        configs, out, {"image": str(tmp_path / "frame.nii.gz"), "points": [[60, 40]]}, **infer_override(tiny_weights)
    )
    assert files_left(out) == ["frame_seg.nii.gz"]
    seg = nib.load(str(out / "frame_seg.nii.gz"))
    assert seg.shape == (70, 45)
    np.testing.assert_allclose(seg.affine, affine)


class _ClickDisc(torch.nn.Module):
    """Fake SAMUS with SAMUS's frames (32 px input, 32 px logits): logit +10 within 3 px of the first click."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def encode(self, images):
        return images

    def decode(self, embeddings, point_coords=None, point_labels=None, boxes=None):
        yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
        x, y = point_coords[0, 0].tolist()
        return torch.where(torch.hypot(xx - x, yy - y) <= 3, 10.0, -10.0)[None, None] + self.dummy, None


def test_inference_click_lands_where_the_viewer_shows_it(configs, tmp_path):
    """A click at (x, y) of a 200 x 100 (W x H) PNG comes back at column x, row y of the output PNG."""
    weights = save_weights(tmp_path, _ClickDisc().state_dict())
    Image.fromarray(np.zeros((100, 200), np.uint8)).save(tmp_path / "wide.png")
    out = tmp_path / "out"
    override = {
        "ckpt_path": str(weights),
        "network_def": {"_target_": "test_samus_bundle._ClickDisc"},
        "image_size": 32,
    }
    run_inference(configs, out, {"image": str(tmp_path / "wide.png"), "points": [[150, 20]]}, **override)
    mask = np.asarray(Image.open(out / "wide_seg.png"))
    assert mask.shape == (100, 200) and mask[20, 150] == 255 and mask[80, 50] == 0
    rows, cols = np.nonzero(mask)
    assert abs(rows.mean() - 20) < 3 and abs(cols.mean() - 150) < 3


@pytest.mark.parametrize(
    "prompt, fragments",
    [({"points": [[700, 10]]}, ["outside the image"]), ({}, ["no prompt"]), ({"boxes": [[10, 10, 5, 50]]}, ["boxes"])],
    ids=["point_outside", "no_prompt", "inverted_box"],
)
def test_inference_bad_prompts_write_nothing(configs, tiny_weights, tmp_path, prompt, fragments):
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(tmp_path / "f.png")
    out = tmp_path / "out"
    expect_failure(
        lambda: make_workflow(
            configs,
            "inference.json",
            "infer",
            output_dir=str(out),
            input_dict={"image": str(tmp_path / "f.png"), **prompt},
            **infer_override(tiny_weights),
        ),
        out,
        *fragments,
    )


def test_inference_hq_variant(configs, tmp_path):
    torch.manual_seed(0)
    weights = save_weights(tmp_path, samus.build_samus(hq=True, **TINY).state_dict(), "model_hq.pt")
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(tmp_path / "f.png")
    out = tmp_path / "out"
    run_inference(
        configs,
        out,
        {"image": str(tmp_path / "f.png"), "points": [[30, 20]]},
        extra=["inference_hq.json"],
        **infer_override(weights),
    )
    assert files_left(out) == ["f_seg.png"]


@pytest.mark.slow
def test_full_size_forward_on_a_real_frame(configs, tmp_path, ultrasound_dir):
    """Published sizes (133 M parameters, seeded weights) through inference.json once, on the palette-colour frame."""
    torch.manual_seed(0)
    weights = save_weights(tmp_path, samus.build_samus().state_dict())
    out = tmp_path / "out"
    run_inference(
        configs,
        out,
        {"image": str(ultrasound_dir / "gdcm-US-ALOKA-16.dcm"), "points": [[330, 240]]},
        ckpt_path=str(weights),
    )
    assert nib.load(str(out / "gdcm-US-ALOKA-16_seg.nii.gz")).shape == (640, 480)
