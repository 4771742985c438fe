"""Evaluation prompts, slice sampling, SAM input, losses, batch preparation, embedding cache, saving, datalists."""

import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from common.data.datalists import paired_datalist
from common.methods.medsam import MedSAMLoss, mask_iou
from common.methods.medsam.batch import PrepareBoxPromptBatch
from common.methods.medsam.evaluation_boxes import EvaluationBoxesd, StructureChannelsd, structure_boxes
from common.methods.medsam.slices import ForegroundSlicesd
from common.networks.medsam import CachedEncoderSam, EmbeddingCache, build_lite_medsam
from common.networks.sam import build_tiny_sam
from common.transforms.io import AtomicSaveImaged, output_stem
from common.transforms.sam_input import SamSliceInputd, SliceGeometry


def _label():
    label = torch.zeros(1, 12, 10, 5, dtype=torch.uint8)
    label[0, 2:5, 3:6, 1:3] = 4
    label[0, 7:9, 1:2, 2] = 9
    return label


def test_structure_boxes_per_protocol():
    lab = _label()[0].long()
    assert structure_boxes(lab, 4, "propagation") == [[2, 3, 1, 4, 5, 2]]
    assert structure_boxes(lab, 4, "slices") == [[2, 3, 1, 4, 5, 1], [2, 3, 2, 4, 5, 2]]
    assert structure_boxes(lab, 5, "slices") == []


def test_evaluation_boxes_channels_and_reference_ranks():
    out = EvaluationBoxesd("label", structures=[9, 4, 1])({"label": _label()})
    # protocol-major channels: slices -> 1..3, propagation -> 4..6; absent structure 1 has no boxes
    assert out["box_labels"].tolist() == [1, 2, 2, 4, 5]
    assert out["box_values"].tolist() == [1, 2, 2, 1, 2]  # rank among present structures
    assert out["boxes"].shape == (5, 6)
    channels = StructureChannelsd("label", structures=[9, 4, 1])({"label": MetaTensor(_label().float())})["label"]
    assert channels.shape == (3, 12, 10, 5) and channels[1].sum() == 18 and channels[2].sum() == 0


def test_empty_reference_label_is_an_error():
    empty = MetaTensor(torch.zeros(1, 4, 4, 4), meta={"filename_or_obj": "empty_label.nii.gz"})
    with pytest.raises(ValueError, match="empty_label.nii.gz.*empty label"):
        EvaluationBoxesd("label", structures=[1, 2])({"label": empty})


def test_foreground_slices_are_deterministic():
    image = torch.rand(1, 12, 10, 5)
    samples = ForegroundSlicesd(num_slices=3)({"image": image, "label": _label()})
    assert [s["label_value"] for s in samples] == [4, 4, 9]
    assert torch.equal(samples[0]["image"], image[..., 1]) and samples[0]["label"].sum() == 9


def test_foreground_slices_keep_only_the_chosen_structures():
    image = torch.rand(1, 12, 10, 5)
    samples = ForegroundSlicesd(num_slices=3, structures=[9, 7])({"image": image, "label": _label()})
    assert [s["label_value"] for s in samples] == [9]  # 7 is absent: skipped
    with pytest.raises(ValueError, match=r"none of the label values \[7\]"):
        ForegroundSlicesd(structures=[7])({"image": image, "label": _label()})


def test_sam_slice_input_keeps_xy_order_and_pads():
    image = torch.zeros(1, 100, 50)
    image[0, 10:20, 5:8] = 255.0
    label = (image > 0).float()
    out = SamSliceInputd(image_size=256)({"image": image, "label": label})
    assert out["image"].shape == (3, 256, 256) and out["label"].shape == (1, 256, 256)
    assert out["image"].max() == 1.0 and out["label"][0, 128:].sum() == 0 and out["label"][0, :, 128:].sum() == 0
    # rows [10, 20) and columns [5, 8) scale by 2.56 to [25.6, 51.2) and [12.8, 20.48): pixel centres 26..50, 13..19
    nz = torch.nonzero(out["label"][0])
    assert nz.min(0).values.tolist() == [26, 13] and nz.max(0).values.tolist() == [50, 19]
    assert torch.equal(torch.nonzero(out["image"][0] > 0.5), nz)


def test_slice_geometry_stretch_mode_scales_boxes_per_axis():
    geometry = SliceGeometry(100, 50, 1024, keep_aspect_ratio=False)
    assert geometry.box_to_model([10, 20, 40, 80]).tolist() == pytest.approx([204.8, 204.8, 819.2, 819.2])
    assert geometry.image(torch.rand(1, 100, 50) * 255).shape == (3, 1024, 1024)


def test_medsam_loss_terms():
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    perfect = target * 20 - 10
    assert mask_iou(perfect, target).tolist() == [[pytest.approx(1.0)], [pytest.approx(1.0)]]
    loss = MedSAMLoss(iou_weight=1.0)
    good = loss((perfect, torch.ones(2, 1)), target)
    bad_iou = loss((perfect, torch.zeros(2, 1)), target)
    assert bad_iou - good == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="IoU prediction"):
        loss(perfect, target)
    assert MedSAMLoss(iou_weight=0, resize_logits=True)(torch.zeros(2, 1, 4, 4), target) > 0


def test_prepare_box_prompt_batch():
    batch = {"image": torch.rand(2, 3, 8, 8), "label": torch.rand(2, 1, 8, 8), "box": torch.tensor([[1, 2, 3, 4]] * 2)}
    image, label, args, kwargs = PrepareBoxPromptBatch(return_iou=True)(batch)
    assert kwargs["boxes"].shape == (2, 1, 4) and kwargs["boxes"].dtype == torch.float32 and kwargs["return_iou"]
    assert args == () and image.shape == (2, 3, 8, 8)


def test_cached_encoder_runs_once_per_image_and_keeps_state_dict():
    base = build_tiny_sam()
    cached = CachedEncoderSam(base.image_encoder, base.prompt_encoder, base.mask_decoder)
    assert set(cached.state_dict()) == set(base.state_dict())
    size = base.image_size[0]
    images = torch.rand(2, 3, size, size)
    first = cached.encode(images)
    second = cached.encode(images.flip(0))
    assert torch.allclose(first.flip(0), second) and cached.embedding_cache.misses == 2
    assert cached.embedding_cache.hits == 2
    assert not any(p.requires_grad for p in cached.image_encoder.parameters())
    assert all(p.requires_grad for p in cached.mask_decoder.parameters())


def test_embedding_cache_bounded():
    calls = []
    cache = EmbeddingCache(lambda x: calls.append(len(x)) or x.mean((2, 3), keepdim=True), max_items=2)
    for i in range(3):
        cache(torch.full((1, 3, 2, 2), float(i)))
    cache(torch.full((1, 3, 2, 2), 0.0))  # evicted, recomputed
    assert calls == [1, 1, 1, 1] and len(cache.store) == 2


def test_litemedsam_parameter_count():
    assert sum(p.numel() for p in build_lite_medsam().parameters()) == 9_791_300


def test_atomic_save_writes_geometry_and_no_temp(tmp_path):
    affine = np.diag([-0.7, -0.7, 2.0, 1.0])
    pred = MetaTensor(
        torch.zeros(1, 6, 5, 1, dtype=torch.int64),
        meta={"filename_or_obj": "/d/ct.nii.gz"},
        affine=torch.tensor(affine),
    )
    pred[0, 1, 2, 0] = 3
    out = AtomicSaveImaged("pred", output_dir=str(tmp_path / "o"))({"pred": pred})
    saved = nib.load(out["pred"].meta["saved_to"])
    assert os.path.basename(saved.get_filename()) == "ct_seg.nii.gz"
    assert saved.shape == (6, 5, 1) and np.allclose(saved.affine, affine) and saved.get_fdata()[1, 2, 0] == 3
    assert os.listdir(tmp_path / "o") == ["ct_seg.nii.gz"]
    assert output_stem("/a/series_dir/") == "series_dir" and output_stem("x.dcm") == "x"


def test_paired_datalist(tmp_path):
    for folder in ("imagesTr", "labelsTr"):
        (tmp_path / folder).mkdir()
    (tmp_path / "imagesTr" / "a_0000.nii.gz").touch()
    (tmp_path / "labelsTr" / "a.nii.gz").touch()
    (tmp_path / "imagesTr" / "b").mkdir()
    (tmp_path / "labelsTr" / "b.nii.gz").touch()
    pairs = paired_datalist(str(tmp_path))
    assert [os.path.basename(p["label"]) for p in pairs] == ["a.nii.gz", "b.nii.gz"]
    (tmp_path / "imagesTr" / "c.nii.gz").touch()
    with pytest.raises(ValueError, match="have no label"):
        paired_datalist(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="imagesTs"):
        paired_datalist(str(tmp_path), "imagesTs", "labelsTs")


def test_intensity_normalizer_switch():
    from common.transforms.intensity import CTWindowd, NonZeroPercentileNormalized, intensity_normalizer

    ct = intensity_normalizer("image", "abdomen")({"image": torch.tensor([[-1000.0, -160.0, 40.0, 240.0, 3000.0]])})
    assert ct["image"].tolist() == [[0.0, 0.0, 127.5, 255.0, 255.0]]
    assert isinstance(intensity_normalizer("image", [40, 80]), CTWindowd)
    assert isinstance(intensity_normalizer("image", "percentile"), NonZeroPercentileNormalized)
    assert intensity_normalizer("image", "none")({"image": torch.tensor([2.0, 4.0, 6.0])})["image"].tolist() == [
        0,
        127.5,
        255,
    ]
    with pytest.raises(ValueError, match="abdomen"):
        intensity_normalizer("image", "lung_window")
