"""Progress output: bars on a terminal only, and log lines that name what is being segmented."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from test_box_propagation import BoxEchoNetwork

from common import progress as progress_module
from common.methods.medsam import BoxPropagationInferer

REPO = Path(__file__).resolve().parents[2]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_on_a_terminal_and_nothing_elsewhere(monkeypatch):
    for stream, shown in ((io.StringIO(), False), (Terminal(), True)):
        monkeypatch.setattr(progress_module.sys, "stderr", stream)
        assert list(progress_module.progress(range(3), desc="box 1/1 slices")) == [0, 1, 2]
        assert progress_module.on_terminal() is shown
        assert ("box 1/1 slices" in stream.getvalue() and "/3" in stream.getvalue()) is shown, stream.getvalue()
        assert shown or stream.getvalue() == ""


def test_box_log_lines_name_the_structure(caplog):
    volume = torch.rand(1, 1, 64, 64, 4) * 255
    boxes = torch.tensor([[[10, 10, 0, 30, 30, 1], [20, 20, 2, 40, 40, 3]]])
    inferer = BoxPropagationInferer(box_margin=0, mask_value=1, label_names=["spleen (1), slices", "liver (5), slices"])
    with caplog.at_level(logging.INFO, logger="common.methods.medsam.box_propagation"):
        inferer(volume, BoxEchoNetwork(), boxes, torch.tensor([[1, 2]]))
        BoxPropagationInferer(box_margin=0, mask_value=1)(volume, BoxEchoNetwork(), boxes[:, :1], torch.tensor([[7]]))
    assert [r.getMessage() for r in caplog.records] == [
        "box 1/2 (spleen (1), slices): slices 0-1",
        "box 2/2 (liver (5), slices): slices 2-3",
        "box 1/1 (label 7): slices 0-1",
    ]


def test_medsam_evaluation_names_each_channel_by_structure_and_protocol():
    parser = ConfigParser()
    parser.read_config(
        [str(REPO / "bundles/medsam/configs/inference.json"), str(REPO / "bundles/medsam/configs/evaluate.json")]
    )
    names = parser.get_parsed_content("inferer").label_names
    structures = json.loads((REPO / "bundles/medsam/configs/evaluate.json").read_text())["structures"]
    assert len(names) == 2 * len(structures) and names[0] == "spleen (1), slices"
    assert names[len(structures) + 5] == "pancreas (7), propagation"  # channel 12 of the evaluation boxes


def test_validation_and_evaluation_engines_show_progress_on_a_terminal():
    for config in sorted(REPO.glob("bundles/*/configs/train.json")) + sorted(
        REPO.glob("bundles/*/configs/evaluate.json")
    ):
        text = json.loads(config.read_text())
        handlers = text["validate"]["handlers"] if config.name == "train.json" else text["handlers"]
        bars = [h for h in handlers if isinstance(h, dict) and h.get("_target_") == "ignite.handlers.ProgressBar"]
        assert len(bars) == 1 and bars[0]["disable"] is None, config
