"""Box prompts derived from a reference label map, for zero-shot evaluation of box-prompted models.

Two protocols (MedSAM paper / LiteMedSAM challenge):

* ``"slices"``: on every slice that contains the structure, its tight 2D box (one box per slice).
* ``"propagation"``: the structure's tight 3D box, segmented with slice-to-slice box propagation.

Boxes are in the current array's voxel indices (the label must already be in the image's space).
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

PROTOCOLS = ("slices", "propagation")


def _source(x) -> str:
    return str(getattr(x, "meta", {}).get("filename_or_obj", "<in-memory label>"))


def structure_boxes(label_xyz: torch.Tensor, value: int, protocol: str) -> list[list[int]]:
    """Boxes ``[x0, y0, z0, x1, y1, z1]`` of ``label == value`` for one protocol (empty list if absent)."""
    mask = label_xyz == value
    if not bool(mask.any()):
        return []
    if protocol == "propagation":
        nz = torch.nonzero(mask)
        lo, hi = nz.min(0).values.tolist(), nz.max(0).values.tolist()
        return [lo + hi]
    if protocol != "slices":
        raise ValueError(f"unknown protocol {protocol!r}, expected one of {PROTOCOLS}")
    boxes = []
    for z in torch.nonzero(mask.any(0).any(0)).flatten().tolist():
        nz = torch.nonzero(mask[:, :, z])
        (x0, y0), (x1, y1) = nz.min(0).values.tolist(), nz.max(0).values.tolist()
        boxes.append([x0, y0, z, x1, y1, z])
    return boxes


class EvaluationBoxesd(MapTransform):
    """Derive the boxes of every protocol from a reference label ``(1, X, Y, Z)``.

    Writes ``box_key`` ``(N, 6)`` int64 and ``box_label_key`` ``(N,)``: the output channel of each box, where
    channel ``p * len(structures) + s + 1`` is protocol ``p``, structure ``s`` (so one inferer pass, sharing the
    slice embeddings, serves all protocols). Structures absent from the label get no boxes. Also writes
    ``box_value_key`` ``(N,)``: the 1-based rank of the box's structure among those present, which is the value the
    LiteMedSAM script's label map holds when propagating (see ``BoxPropagationInferer``).

    Raises ValueError when none of ``structures`` is present (an empty reference label).
    """

    def __init__(
        self,
        keys: KeysCollection,
        structures: Sequence[int],
        protocols: Sequence[str] = PROTOCOLS,
        box_key: str = "boxes",
        box_label_key: str = "box_labels",
        box_value_key: str = "box_values",
    ):
        super().__init__(keys)
        self.structures = [int(s) for s in structures]
        self.protocols = list(protocols)
        self.box_key, self.box_label_key, self.box_value_key = box_key, box_label_key, box_value_key

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            label = torch.as_tensor(d[key])[0].round().long()
            present = [s for s in self.structures if bool((label == s).any())]
            if not present:
                raise ValueError(
                    f"reference label '{key}' from {_source(d[key])} contains none of the structures "
                    f"{self.structures}: cannot derive box prompts from an empty label"
                )
            boxes, channels, ranks = [], [], []
            for p, protocol in enumerate(self.protocols):
                for s, value in enumerate(self.structures):
                    found = structure_boxes(label, value, protocol)
                    if not found:
                        continue
                    boxes += found
                    channels += [p * len(self.structures) + s + 1] * len(found)
                    ranks += [present.index(value) + 1] * len(found)
            d[self.box_key] = torch.as_tensor(boxes, dtype=torch.int64)
            d[self.box_label_key] = torch.as_tensor(channels, dtype=torch.int64)
            d[self.box_value_key] = torch.as_tensor(ranks, dtype=torch.int64)
        return d


class StructureChannelsd(MapTransform):
    """Label map ``(1, X, Y, Z)`` -> one binary channel per structure ``(len(structures), X, Y, Z)`` (float32)."""

    def __init__(self, keys: KeysCollection, structures: Sequence[int], allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.structures = [int(s) for s in structures]

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            channels = torch.cat([(label.round() == s) for s in self.structures], dim=0).float()
            if hasattr(label, "copy_meta_from"):
                from monai.data import MetaTensor

                channels = MetaTensor(
                    channels, meta=dict(label.meta), applied_operations=list(label.applied_operations)
                )
            d[key] = channels
        return d
