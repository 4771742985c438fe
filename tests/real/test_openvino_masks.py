"""MedSAM's OpenVINO encoder path on real data (issue 15 item 6): the shipped LiteMedSAM weights, real CT slices.

1. Slices: for every organ of both shared CT volumes, the slice where it is largest, as the network sees it, with
   the organ's tight box. OpenVINO float32 embeddings within 1e-4 of torch float32's (measured 6e-6). The masks
   decoded from the OpenVINO bf16 embeddings do not reach the Dice >= 0.99 with torch float32's that issue 15 asks
   for: measured 0.906 (the right kidney on the 3 mm volume) to 1.0, mean 0.980, printed by ``pytest -s``; torch's
   own bf16 autocast is no closer (embedding cosine 0.99911 vs OpenVINO's 0.99925 on one slice), so bf16 stays
   opt-in on both backends. The test keeps that agreement from getting worse: every slice >= 0.88, mean >= 0.97.
   The bf16 model is compiled from the float32 conversion's cached file (no second conversion).
2. The bundle: ``inference.json`` with ``encoder_backend openvino`` on the DICOM series, four organ boxes in one
   call: the label map has per-organ Dice >= 0.999 with the torch run's, and the converted encoder is cached in
   ``openvino/`` beside the weights file the run was given.
"""

from __future__ import annotations

import copy

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from workflow_utils import box_of, ct_labels_on_image, dice, inference_mask, read_dicom_series

from common.bundle import optimise_for_inference
from common.networks.medsam import build_lite_medsam
from common.networks.sam.checkpoint import load_checkpoint
from common.transforms.intensity import CTWindowd
from common.transforms.sam_input import SliceGeometry

ORGANS = (1, 2, 3, 5, 6, 7)  # spleen, kidneys, liver, stomach, pancreas
BF16_SLICE_DICE_MIN, BF16_MEAN_DICE_MIN = 0.88, 0.97  # measured: 0.906 and 0.980


def _volume_and_labels(totalseg_dir, volume: str) -> tuple[np.ndarray, np.ndarray]:
    """HU and labels in the image file's voxel order ``(i, j, k)``."""
    if volume == "3mm":
        image = np.asarray(nib.load(str(totalseg_dir / "ct_abdomen_3mm.nii.gz")).dataobj)
    else:
        image = sitk.GetArrayFromImage(read_dicom_series(totalseg_dir / "dicom")[0]).transpose(2, 1, 0)
    return image, ct_labels_on_image(totalseg_dir, volume)


def _organ_slices(totalseg_dir):
    """``(volume, organ, network input (1, 3, 256, 256), box (1, 1, 4))`` for each organ's largest slice."""
    cases = []
    for volume in ("3mm", "dicom"):
        hu, labels = _volume_and_labels(totalseg_dir, volume)
        window = CTWindowd(keys="image", window="abdomen", b_min=0.0, b_max=255.0)
        windowed = torch.as_tensor(window({"image": torch.from_numpy(hu.astype(np.float32))[None]})["image"])
        width, height = hu.shape[:2]  # (i, j): slice rows follow j
        geometry = SliceGeometry(height, width, 256, keep_aspect_ratio=True, quantize=True)
        for organ in ORGANS:
            organ_mask = labels == organ
            if not organ_mask.any():
                continue
            k = int(organ_mask.sum(axis=(0, 1)).argmax())
            x0, y0, x1, y1 = box_of(organ_mask[:, :, k].T)
            image = geometry.image(windowed[0, :, :, k].T[None])[None]
            cases.append((volume, organ, image, geometry.box_to_model([x0, y0, x1, y1])[None, None]))
    return cases


def test_openvino_embeddings_and_bf16_masks_on_real_slices(
    totalseg_dir, litemedsam_weights, tmp_path, openvino_required
):
    torch_net = build_lite_medsam().eval()
    load_checkpoint(torch_net, str(litemedsam_weights), strict=True)
    optimise_for_inference(torch_net)
    weights = tmp_path / "model.pt"  # the cache goes to tmp_path/openvino
    weights.symlink_to(litemedsam_weights)
    ov32, ov16 = copy.deepcopy(torch_net), copy.deepcopy(torch_net)
    optimise_for_inference(ov32, "float32", "openvino", str(weights))
    optimise_for_inference(ov16, "bf16", "openvino", str(weights))
    cases = _organ_slices(totalseg_dir)
    assert len(cases) == 10  # six organs in the 3 mm volume, four in the DICOM series
    worst_embedding, agreement = 0.0, {}
    with torch.no_grad():
        for volume, organ, image, box in cases:
            reference = torch_net.encode(image)
            worst_embedding = max(worst_embedding, (ov32.encode(image) - reference).abs().max().item())
            low = ov16.encode(image)
            masks = [net.decode(e, boxes=box)[0] > 0 for net, e in ((torch_net, reference), (ov16, low))]
            assert masks[0].sum() > 100, (volume, organ)  # the organ is found
            agreement[f"{volume}/{organ}"] = round(dice(masks[1].numpy(), masks[0].numpy()), 4)
    print(f"OpenVINO float32 max abs embedding difference {worst_embedding:.2e}; bf16 mask Dice {agreement}")
    assert 0 < worst_embedding < 1e-4
    assert min(agreement.values()) >= BF16_SLICE_DICE_MIN, agreement
    assert np.mean(list(agreement.values())) >= BF16_MEAN_DICE_MIN, agreement
    assert ov32.image_encoder.forward.conversions == 1 and ov16.image_encoder.forward.conversions == 0
    assert sorted(p.suffix for p in (tmp_path / "openvino").iterdir()) == [".bin", ".xml"]


@pytest.mark.slow  # two MedSAM runs over the 20-slice series
def test_inference_json_with_the_openvino_backend(
    repo_root, totalseg_dir, litemedsam_weights, tmp_path, openvino_required
):
    _, labels = _volume_and_labels(totalseg_dir, "dicom")
    present = [o for o in ORGANS if (labels == o).any()]
    request = {
        "image": str(totalseg_dir / "dicom"),
        "boxes": [box_of(labels == o) for o in present],
        "box_labels": present,
    }
    weights = tmp_path / "weights" / "model.pt"
    weights.parent.mkdir()
    weights.symlink_to(litemedsam_weights)
    configs = repo_root / "bundles" / "medsam" / "configs"
    masks = {}
    for backend in ("torch", "openvino"):
        masks[backend] = inference_mask(
            configs, tmp_path / backend, request, ckpt_path=str(weights), encoder_backend=backend
        )
    agreement = {o: round(dice(masks["openvino"] == o, masks["torch"] == o), 4) for o in present}
    print(f"inference.json, OpenVINO float32 vs torch float32, per-organ Dice {agreement}")
    assert min(agreement.values()) >= 0.999, agreement
    cached = sorted(p.name for p in (weights.parent / "openvino").iterdir())
    assert len(cached) == 2 and cached[0].startswith("TinyViT-") and cached[0].endswith("-1x3x256x256.bin")
