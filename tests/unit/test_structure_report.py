"""``StructureMetricsReport``: structures alone and merged into the label map a user receives."""

import torch

from common.metrics.report import StructureMetricsReport, highest_score_labels


def test_highest_score_labels_takes_the_most_confident_structure():
    scores = torch.zeros(3, 4, 1, 1)
    scores[0, :3] = torch.tensor([2.0, 5.0, 1.0])[:, None, None]  # structure 1 on voxels 0..2
    scores[2, 1:] = torch.tensor([3.0, 3.0, 4.0])[:, None, None]  # structure 3 on voxels 1..3
    labels = highest_score_labels(scores)
    assert labels.flatten().tolist() == [1, 1, 3, 3]
    assert highest_score_labels(scores, threshold=4.5).flatten().tolist() == [0, 1, 0, 0]


def test_label_map_rows_score_the_merged_map(tmp_path):
    """Two structures whose masks overlap: alone each is perfect; in the label map the more confident one takes
    the overlap, so the other loses it."""
    label = torch.zeros(2, 6, 6, 1)
    label[0, :3], label[1, 3:] = 1, 1  # rows 0-2 structure A, rows 3-5 structure B
    pred = torch.zeros(2, 6, 6, 1)
    pred[0, :4] = 2.0  # A's mask spills into row 3 with a lower logit ...
    pred[1, 3:] = 5.0  # ... than B's there
    pred[0, :3] = 9.0
    report = StructureMetricsReport(str(tmp_path), [1, 2], ["A", "B"], ["boxes"], threshold=0.0, label_map=True)
    rows = {(r["protocol"], r["structure"]): r["dice"] for r in report.add_case("case", pred, label, (1, 1, 1))}
    assert rows[("boxes", "A")] == round(2 * 18 / (24 + 18), 4) and rows[("boxes", "B")] == 1.0
    assert rows[("boxes label map", "A")] == rows[("boxes label map", "B")] == 1.0
    report.write()
    assert set(report.summary()) == {"boxes", "boxes label map"}
