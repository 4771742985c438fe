"""BestWeightsSaver: the best weights only, written atomically, never over the weights a run starts from; and every
bundle's train.json uses it with the run folder as the default."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from monai.bundle import ConfigParser
from torch import nn

from common.engines.checkpoints import BestWeightsSaver
from common.errors import InvalidInputError, input_error

REPO = Path(__file__).resolve().parents[2]
TRAIN_CONFIGS = sorted(REPO.glob("bundles/*/configs/train.json"))


def validated(score: float) -> SimpleNamespace:
    """What the saver reads from the validation engine."""
    return SimpleNamespace(state=SimpleNamespace(metrics={"val_mean_dice": score}, key_metric_name="val_mean_dice"))


def test_writes_the_first_and_every_better_score_only(tmp_path):
    net = nn.Linear(2, 1)
    saver = BestWeightsSaver(tmp_path / "ckpt", {"model": net})
    written = []
    for score in (0.2, 0.1, 0.5, 0.5, 0.4):
        with torch.no_grad():
            net.bias.fill_(score)
        saver(validated(score))
        written.append(float(torch.load(tmp_path / "ckpt" / "model.pt", weights_only=True)["bias"]))
    assert written == pytest.approx([0.2, 0.2, 0.5, 0.5, 0.5])
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["model.pt"]


def test_a_failed_write_leaves_the_previous_best_and_no_temporary_file(tmp_path, monkeypatch):
    net = nn.Linear(2, 1)
    saver = BestWeightsSaver(tmp_path, {"model": net})
    saver(validated(0.1))
    before = (tmp_path / "model.pt").read_bytes()

    def killed_while_saving(obj, path):
        Path(path).write_bytes(b"\x80partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_while_saving)
    with pytest.raises(KeyboardInterrupt):
        saver(validated(0.9))
    assert (tmp_path / "model.pt").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_wrapped_networks_are_saved_without_the_module_prefix_and_several_as_a_dict(tmp_path):
    net, head = nn.Linear(2, 1), nn.Linear(1, 1)
    BestWeightsSaver(tmp_path / "a", {"model": nn.DataParallel(net)})(validated(1.0))
    assert set(torch.load(tmp_path / "a" / "model.pt", weights_only=True)) == {"weight", "bias"}
    BestWeightsSaver(tmp_path / "b", {"model": net, "head": head})(validated(1.0))
    assert set(torch.load(tmp_path / "b" / "model.pt", weights_only=True)) == {"model", "head"}


def test_refuses_to_write_over_the_weights_the_run_starts_from(tmp_path):
    start = tmp_path / "models" / "model.pt"
    start.parent.mkdir()
    torch.save(nn.Linear(2, 1).state_dict(), start)
    (tmp_path / "link").symlink_to(tmp_path / "models", target_is_directory=True)
    for save_dir in (tmp_path / "models", tmp_path / "link", str(tmp_path / "models") + "/./"):
        with pytest.raises(InvalidInputError, match="the weights this run starts from"):
            BestWeightsSaver(save_dir, {"model": nn.Linear(2, 1)}, protected=[str(start)])
    BestWeightsSaver(tmp_path / "runs", {"model": nn.Linear(2, 1)}, protected=[str(start)])  # elsewhere: fine


def test_keeps_the_weights_its_first_save_replaces(tmp_path):
    """MONAI Label's training writes over the served weights it starts from: those are kept, once per run."""
    served, previous = tmp_path / "model.pt", tmp_path / "model_previous.pt"
    torch.save({"bias": torch.tensor([7.0])}, served)
    started_from = served.read_bytes()
    net = nn.Linear(2, 1)
    saver = BestWeightsSaver(tmp_path, {"model": net}, keep_replaced_as=previous)
    for score in (0.2, 0.5):
        with torch.no_grad():
            net.bias.fill_(score)
        saver(validated(score))
    assert previous.read_bytes() == started_from  # not this run's first best, which the second save replaced
    assert float(torch.load(served, weights_only=True)["bias"]) == pytest.approx(0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "model_previous.pt"]
    BestWeightsSaver(tmp_path / "new", {"model": net}, keep_replaced_as=tmp_path / "new" / "kept.pt")(validated(1))
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["model.pt"]  # nothing replaced, nothing kept
    with pytest.raises(InvalidInputError, match="is the checkpoint itself"):
        BestWeightsSaver(tmp_path, {"model": net}, keep_replaced_as=served)


@pytest.mark.parametrize("config", TRAIN_CONFIGS, ids=lambda p: p.parts[-3])
def test_every_train_config_saves_best_weights_to_the_run_folder(config):
    text = json.loads(config.read_text())
    savers = [h for h in text["validate"]["handlers"] if "BestWeightsSaver" in str(h.get("_target_"))]
    assert len(savers) == 1 and savers[0]["protected"] == "@protected_weights"
    assert savers[0]["keep_replaced_as"] == "@previous_weights" and text["previous_weights"] is None
    assert "CheckpointSaver" not in config.read_text()  # MONAI's saver writes in place
    parser = ConfigParser()
    parser.read_config(str(config))
    parser["bundle_root"] = "/b"
    assert parser.get_parsed_content("ckpt_dir") == "/b/runs/checkpoints"
    protected = parser.get_parsed_content("protected_weights")
    assert (parser.get_parsed_content("pretrained_path") in protected) == parser.get_parsed_content("load_pretrain")


def test_medsam_fine_tuning_refuses_to_save_over_its_starting_weights(tmp_path):
    config = REPO / "bundles" / "medsam" / "configs" / "train.json"
    parser = ConfigParser()
    parser.read_config(str(config))
    start = tmp_path / "models" / "model.pt"
    parser.update({"bundle_root": str(tmp_path), "ckpt_dir": str(start.parent)})
    index = next(i for i, h in enumerate(parser["validate"]["handlers"]) if "BestWeightsSaver" in str(h["_target_"]))
    with pytest.raises(Exception) as raised:
        parser.get_parsed_content(f"validate#handlers#{index}")
    assert "the weights this run starts from" in str(input_error(raised.value))  # the cause MONAI wraps
    parser["load_pretrain"] = False  # training from scratch may write there
    assert parser.get_parsed_content(f"validate#handlers#{index}", lazy=False).path == str(start)
