"""samihs_polyp bundle (SAMIHS prompted by an external network's maps) through MONAI's bundle machinery, tiny network.

No SUN-SEG offline (and no redistribution): synthetic colonoscopy clips in SUN-SEG's layout, each with an annotated
polyp and an unannotated look-alike, and PNS+-like external maps (256 x 448 uint8: shifted, blurred, part missed, a
false blob). That proves the layout, the frame and map pipeline, the outputs (uint8 probability PNGs mirroring
``GT/<clip>/``), the toolbox evaluation and that training makes the network use the map, not polyp accuracy.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from workflow_utils import (
    checked_properties,
    expect_failure,
    files_left,
    make_workflow,
    network_def,
    run_workflow,
    save_weights,
    train_with_torchrun,
    verify_clicked_2d_net,
)

from common.data.synthetic_sunseg import write_synthetic_sunseg
from common.metrics.sunseg import evaluate_tree
from common.networks import samihs

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/bundles/conftest.py

TINY = samihs.TINY_SIZES
TINY_NET = network_def("common.networks.samihs.build_samihs", TINY)
TINY_LOW = 4 * TINY["image_size"] // TINY["patch_size"]
TINY_CFG = {"network_def": TINY_NET, "image_size": TINY["image_size"], "num_workers": 0}
FRAME = (96, 112)  # (H, W) of the synthetic frames


@pytest.fixture(scope="module")
def configs(repo_root) -> Path:
    return repo_root / "bundles" / "samihs_polyp" / "configs"


@pytest.fixture(scope="module")
def sunseg(tmp_path_factory) -> Path:
    """``train/`` (6 clips x 6 frames) and ``test/`` (2 clips x 6 frames) with their external maps beside them."""
    root = tmp_path_factory.mktemp("sunseg")
    write_synthetic_sunseg(root / "train", clips=6, frames=6, size=FRAME, maps_dir=root / "train_maps", seed=1)
    write_synthetic_sunseg(root / "test", clips=2, frames=6, size=FRAME, maps_dir=root / "test_maps", seed=2)
    return root


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_weights(tmp_path_factory.mktemp("polyp_weights"), samihs.build_samihs(**TINY).state_dict())


def infer(configs, out, weights, files=("inference.json",), **override) -> object:
    return run_workflow(
        make_workflow(
            configs, list(files), "infer", output_dir=str(out), ckpt_path=str(weights), **TINY_CFG, **override
        )
    )


def test_verify_net_in_out_with_a_mask_prompt(configs):
    mask_prompt = {
        "mask_inputs": torch.zeros(1, 1, TINY_LOW, TINY_LOW),
        "mask_present": torch.ones(1, dtype=torch.bool),
    }
    verify_clicked_2d_net(configs, TINY_NET, TINY["image_size"], TINY_LOW, mask_prompt)


def test_metadata_and_published_sizes(configs):
    meta = json.loads((configs / "metadata.json").read_text())
    assert "4,238,992 of 93,909,904" in meta["description"]
    net = samihs.build_samihs(device="meta")
    assert net.prompt_encoder.mask_input_size == (256, 256)  # the 1024 px prompt: 4x the 64 x 64 embedding
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert {n for n in trainable if n.startswith("prompt_encoder.mask_downscaling.")}  # trains here, unlike upstream


def test_inference_writes_probability_pngs_mirroring_gt(configs, sunseg, tiny_weights, tmp_path):
    out = tmp_path / "out"
    wf = infer(configs, out, tiny_weights, dataset_dir=str(sunseg / "test"), maps_dir=str(sunseg / "test_maps"))
    assert checked_properties(wf) == []
    gt = sorted(str(p.relative_to(sunseg / "test" / "GT")) for p in (sunseg / "test" / "GT").rglob("*.png"))
    assert [p for p in files_left(out) if p.endswith(".png")] == gt
    assert not [p for p in files_left(out) if Path(p).name.startswith(".")]  # no temp files left
    png = Image.open(out / gt[0])
    assert png.mode == "L" and png.size == (FRAME[1], FRAME[0])
    values = np.asarray(png)
    assert len(np.unique(values)) > 2  # probabilities, not a binary mask (the toolbox thresholds 256 times)


def test_map_changes_the_output_and_propagation_fills_missing_maps(configs, sunseg, tiny_weights, tmp_path):
    with_maps, without, propagated = tmp_path / "maps", tmp_path / "none", tmp_path / "propagated"
    test = str(sunseg / "test")
    infer(configs, with_maps, tiny_weights, dataset_dir=test, maps_dir=str(sunseg / "test_maps"))
    infer(configs, without, tiny_weights, dataset_dir=test)
    infer(configs, propagated, tiny_weights, dataset_dir=test, propagate=True)
    name = Path("case1") / "case1_a1_ayy_image0003.png"

    def read(folder: Path) -> np.ndarray:
        return np.asarray(Image.open(folder / name)).astype(int)

    assert np.abs(read(with_maps) - read(without)).max() > 0
    assert np.abs(read(propagated) - read(without)).max() > 0  # the previous prediction was the prompt
    first = Path("case1") / "case1_a1_ayy_image0001.png"  # nothing to propagate into a clip's first frame
    assert np.array_equal(np.asarray(Image.open(propagated / first)), np.asarray(Image.open(without / first)))


def test_one_frame_with_clicks_and_a_map(configs, sunseg, tiny_weights, tmp_path):
    frame = next((sunseg / "test" / "Frame" / "case1").glob("*.jpg"))
    out = tmp_path / "one"
    infer(
        configs,
        out,
        tiny_weights,
        input_dict={
            "image": str(frame),
            "mask_prompt": str(sunseg / "test_maps" / "case1" / f"{frame.stem}.png"),
            "points": [[50, 40]],
        },
    )
    assert files_left(out) == [f"{frame.stem}.png"]


def test_video_input(configs, tiny_weights, tmp_path):
    import av

    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = FRAME[1], FRAME[0], "yuv420p"
        for k in range(3):
            rgb = np.full((*FRAME, 3), 60 + 40 * k, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    out = tmp_path / "out"
    infer(configs, out, tiny_weights, video=str(path), propagate=True)
    assert files_left(out) == ["clip", "clip/00001.png", "clip/00002.png", "clip/00003.png"]
    assert Image.open(out / "clip" / "00002.png").size == (FRAME[1], FRAME[0])


def test_evaluate_runs_the_toolbox_on_what_it_wrote(configs, sunseg, tiny_weights, tmp_path):
    out = tmp_path / "eval"
    wf = infer(
        configs,
        out,
        tiny_weights,
        files=("inference.json", "evaluate.json"),
        dataset_dir=str(sunseg / "test"),
        maps_dir=str(sunseg / "test_maps"),
    )
    assert {"per_clip.csv", "summary.json", "predictions"} <= set(files_left(out))
    rows, summary = evaluate_tree(out / "predictions", sunseg / "test" / "GT")
    report = json.loads((out / "summary.json").read_text())
    assert report["n_clips"] == 2 and report["n_frames"] == 2 * 4  # first and last frames dropped
    assert report["metrics"]["maxDice"] == pytest.approx(summary["maxDice"])
    assert wf.evaluator.state.metrics["sunseg_Smeasure"] == pytest.approx(summary["Smeasure"])
    with open(out / "per_clip.csv") as handle:
        assert [r["clip"] for r in csv.DictReader(handle)] == ["case1", "case2"]


def test_bad_input_writes_nothing(configs, tiny_weights, tmp_path):
    out = tmp_path / "out"
    expect_failure(
        lambda: make_workflow(
            configs,
            "inference.json",
            "infer",
            output_dir=str(out),
            ckpt_path=str(tiny_weights),
            dataset_dir=str(tmp_path / "nowhere"),
            **TINY_CFG,
        ),
        out,
        "frame folder not found",
    )


def _train(configs, sunseg, out: Path, **override) -> Path:
    wf = make_workflow(
        configs,
        "train.json",
        "train",
        **{
            **TINY_CFG,
            "ckpt_dir": str(out),
            "output_dir": str(out / "runs"),
            "low_res_size": TINY_LOW,
            "dataset_dir": str(sunseg / "train"),
            "maps_dir": str(sunseg / "train_maps"),
            "init_from_sam": False,
            "val_fraction": 0.2,
            "cache_rate": 1.0,
            "batch_size": 4,
            "learning_rate": 1e-3,
            **override,
        },
    )
    run_workflow(wf)
    assert checked_properties(wf) == []
    assert [p for p in files_left(out) if p.endswith(".pt")] == ["model.pt"]
    return out / "model.pt"


@pytest.mark.parametrize("map_source", ["external", "ground_truth"])
def test_train_runs_and_trains_the_mask_downscaler(configs, sunseg, tmp_path, map_source):
    weights = _train(configs, sunseg, tmp_path / "ckpt", map_source=map_source, epochs=2)
    saved = torch.load(str(weights), weights_only=True)
    torch.manual_seed(0)
    fresh = samihs.build_samihs(**TINY).state_dict()
    key = "prompt_encoder.mask_downscaling.0.weight"
    assert set(saved) == set(fresh) and not torch.equal(saved[key], fresh[key])


def test_training_with_noisy_maps_beats_training_without(configs, sunseg, tmp_path):
    """The claim of the variant, at tiny scale: the frames hold an annotated polyp and a look-alike, so only the map
    says which is which. Trained 40 epochs with the noisy maps (perturbed, dropped at 0.2) the network scores a
    higher SUN-SEG maxDice and S-alpha on unseen clips (with their maps) than the same training without any map
    (every map dropped)."""
    scores = {}
    for name, drop in (("maps", 0.2), ("no_maps", 1.0)):
        weights = _train(configs, sunseg, tmp_path / name, map_source="external", drop_prob=drop, epochs=40)
        out = tmp_path / f"eval_{name}"
        infer(
            configs,
            out,
            weights,
            files=("inference.json", "evaluate.json"),
            dataset_dir=str(sunseg / "test"),
            maps_dir=str(sunseg / "test_maps") if name == "maps" else None,
        )
        scores[name] = json.loads((out / "summary.json").read_text())["metrics"]
    assert scores["maps"]["maxDice"] > scores["no_maps"]["maxDice"] + 0.2, scores
    assert scores["maps"]["Smeasure"] > scores["no_maps"]["Smeasure"], scores


def test_multi_gpu_train_torchrun_gloo(configs, repo_root, sunseg, tmp_path):
    overrides = {
        **TINY_CFG,
        "low_res_size": TINY_LOW,
        "dataset_dir": str(sunseg / "train"),
        "maps_dir": str(sunseg / "train_maps"),
        "map_source": "external",
        "epochs": 1,
        "init_from_sam": False,
    }
    train_with_torchrun(configs, repo_root, tmp_path, overrides, samihs.build_samihs(**TINY))
