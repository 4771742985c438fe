"""medsam bundle training through ``ConfigWorkflow`` (train.json, train_decoder_only.json) and torchrun
(multi_gpu_train.json, gloo on CPU), with tiny overrides on the real 3 mm CT volume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from workflow_utils import checked_properties, make_workflow, run_bundle_torchrun

from common.networks.medsam import build_lite_medsam

TINY = {
    "epochs": 1,
    "slices_per_volume": 2,
    "batch_size": 2,
    "val_slices_per_structure": 1,
    "num_workers": 0,
    "cache_rate": 0.0,
}
ORGANS = [1, 2, 3, 5, 6, 7]


@pytest.fixture(scope="module")
def train_dataset(tmp_path_factory, totalseg_dir) -> Path:
    """imagesTr/labelsTr with two cases, both links to the 3 mm volume and its 41-class labels: case_a trains,
    case_b validates (train.json's default ``structures``, the six organs of evaluate.json, keep validation to six
    structures)."""
    root = tmp_path_factory.mktemp("medsam_train_data")
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir()
    for case in ("case_a", "case_b"):
        (root / "imagesTr" / f"{case}.nii.gz").symlink_to(totalseg_dir / "ct_abdomen_3mm.nii.gz")
        (root / "labelsTr" / f"{case}.nii.gz").symlink_to(totalseg_dir / "ct_abdomen_3mm_labels.nii.gz")
    return root


def load_checkpoint(path: Path):
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    net = build_lite_medsam()
    net.load_state_dict(state, strict=True)
    return state


def test_train(configs, train_dataset, weights, tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    wf = make_workflow(
        configs,
        "train.json",
        "train",
        dataset_dir=str(train_dataset),
        ckpt_dir=str(ckpt_dir),
        output_dir=str(tmp_path / "runs"),
        load_pretrain=True,
        pretrained_path=str(weights),
        **TINY,
    )
    wf.initialize()
    assert checked_properties(wf) == []
    wf.run()
    wf.finalize()

    trainer, evaluator = wf.trainer, wf.evaluator
    assert trainer.state.epoch == 1 and trainer.state.iteration == 1  # 1 training volume x 2 slices / batch 2
    output = trainer.state.output  # decollated: one dict per sample
    assert math.isfinite(float((output[0] if isinstance(output, list) else output)["loss"]))
    validated = evaluator.state.output  # one decollated dict per validation slice
    assert sorted(int(d["label_value"]) for d in evaluator.state.batch) == ORGANS  # 1 slice each, not 41 classes
    assert len(validated) == len(ORGANS)
    val_dice = evaluator.state.metrics["val_mean_dice"]
    assert math.isfinite(val_dice) and 0.0 < val_dice <= 1.0
    assert evaluator.state.best_metric == val_dice and evaluator.state.best_metric_epoch == 1

    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["model.pt"]
    saved = load_checkpoint(ckpt_dir / "model.pt")
    start = torch.load(str(weights), map_location="cpu", weights_only=True)
    assert any(not torch.equal(saved[k], start[k]) for k in start), "one training step changed no weight"


def test_train_decoder_only(configs, train_dataset, weights, tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    wf = make_workflow(
        configs,
        ["train.json", "train_decoder_only.json"],
        "train",
        dataset_dir=str(train_dataset),
        ckpt_dir=str(ckpt_dir),
        output_dir=str(tmp_path / "runs"),
        load_pretrain=True,
        pretrained_path=str(weights),
        **{**TINY, "epochs": 2},
    )
    wf.initialize()
    assert checked_properties(wf) == []
    net = wf.parser.get_parsed_content("network")
    cache = net.embedding_cache
    counts = []  # (hits, misses) after each epoch, validation included (ValidationHandler is attached first)
    wf.trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: counts.append((cache.hits, cache.misses)))
    wf.run()
    wf.finalize()

    assert len(counts) == 2
    (hits1, misses1), (hits2, misses2) = counts
    assert misses1 > 0
    # Epoch 2 validates the same slices again: their embeddings come from the cache; only new training slices
    # (at most slices_per_volume) can miss.
    assert hits2 - hits1 >= 1 and misses2 - misses1 <= TINY["slices_per_volume"]
    assert hits2 - hits1 >= misses1 - TINY["slices_per_volume"]

    saved = load_checkpoint(ckpt_dir / "model.pt")
    start = torch.load(str(weights), map_location="cpu", weights_only=True)
    for name in start:
        if name.startswith(("image_encoder.", "prompt_encoder.")):
            assert torch.equal(saved[name], start[name]), f"{name} changed in decoder-only training"
    assert any(not torch.equal(saved[k], start[k]) for k in start if k.startswith("mask_decoder."))
    assert all(not p.requires_grad for p in net.image_encoder.parameters())
    assert all(not p.requires_grad for p in net.prompt_encoder.parameters())


def test_multi_gpu_train_torchrun_gloo(configs, repo_root, train_dataset, weights, tmp_path):
    """Two CPU processes with DistributedDataParallel over gloo on 127.0.0.1; they must finish by themselves."""
    ckpt_dir = tmp_path / "ckpt"
    overrides = {
        **TINY,
        "dataset_dir": train_dataset,
        "ckpt_dir": ckpt_dir,
        "output_dir": tmp_path / "runs",
        "load_pretrain": True,
        "pretrained_path": weights,
    }
    output = run_bundle_torchrun([configs / "train.json", configs / "multi_gpu_train.json"], overrides, repo_root)
    assert "val_mean_dice" in output
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["model.pt"]
    load_checkpoint(ckpt_dir / "model.pt")
