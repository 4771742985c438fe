"""SAMUS data side: ultrasound frames read as grey (real DICOMs of ../shared/data/ultrasound and synthesised
DICOM/raster variants), BUSI and SAMUS-list datalists, the seeded split, the published augmentation and prompt
rules, user prompts -> objects, the object-prompt inferer, and the per-image metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from common.data.synthetic_ultrasound import write_synthetic_busi
from common.data.ultrasound import busi_datalist, samus_list_datalist, split_datalist
from common.errors import InputNotFoundError, InvalidInputError
from common.methods.samus import (
    LabelPromptsd,
    ObjectPromptInferer,
    RandContrastd,
    RandGammad,
    RandZoomCropd,
    ResizeFramed,
    SelectClassd,
    UserPromptsd,
    prompt_keys,
)
from common.metrics.image_report import image_scores, row_vector_hausdorff
from common.transforms.ultrasound import read_mask, read_ultrasound

LUMA = np.array([0.299, 0.587, 0.114])


# --------------------------------------------------------------------------------------------------- reading frames
def _dicom(path: Path, pixels: np.ndarray, photometric: str, **extra) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"  # US image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    frames = pixels.shape[0] if pixels.ndim == 4 or (pixels.ndim == 3 and photometric.startswith("MONO")) else 1
    rows, cols = (
        pixels.shape[-3:-1] if pixels.shape[-1] == 3 and not photometric.startswith("MONO") else pixels.shape[-2:]
    )
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1 if photometric.startswith("MONO") else 3
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for k, v in extra.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.astype(np.uint8).tobytes()
    ds.save_as(str(path), write_like_original=False)
    return path


@pytest.mark.parametrize("name", ["US1_UNCR.dcm", "gdcm-US-ALOKA-16.dcm"])
def test_real_ultrasound_dicoms_become_grey_of_the_viewer_size(ultrasound_dir, name):
    """RGB (GE, Doppler overlay) and palette colour (ALOKA, 16-bit LUT): grey = luma of the colours a viewer shows."""
    frame = read_ultrasound(ultrasound_dir / name)
    ds = pydicom.dcmread(str(ultrasound_dir / name))
    assert frame.shape == (1, ds.Columns, ds.Rows) == (1, 640, 480)
    if ds.PhotometricInterpretation == "RGB":
        rgb = ds.pixel_array.astype(float)
    else:
        from pydicom.pixel_data_handlers.util import apply_color_lut

        rgb = apply_color_lut(ds.pixel_array, ds).astype(float) / 65535 * 255
    np.testing.assert_allclose(frame[0].numpy().T, rgb @ LUMA, atol=1e-3)
    assert frame.meta["source_format"] == "dicom"
    if name.startswith("gdcm"):  # spacing from the ultrasound regions: 0.0383 cm -> 0.383 mm
        np.testing.assert_allclose(np.diag(frame.meta["original_affine"])[:2], [0.38265, 0.38265], atol=1e-4)


def test_ybr_monochrome1_and_multiframe_dicoms(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 5, 3)).astype(np.uint8)
    from pydicom.pixel_data_handlers.util import convert_color_space

    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    frame = read_ultrasound(_dicom(tmp_path / "ybr.dcm", ybr, "YBR_FULL"))
    np.testing.assert_allclose(frame[0].numpy().T, rgb.astype(float) @ LUMA, atol=2.0)  # YBR round trip in uint8

    grey = rng.integers(0, 256, (6, 5)).astype(np.uint8)
    inverted = read_ultrasound(_dicom(tmp_path / "mono1.dcm", grey, "MONOCHROME1"))
    np.testing.assert_allclose(inverted[0].numpy().T, 255.0 - grey)

    frames = rng.integers(0, 256, (3, 6, 5)).astype(np.uint8)
    path = _dicom(tmp_path / "multi.dcm", frames, "MONOCHROME2")
    np.testing.assert_allclose(read_ultrasound(path, frame=2)[0].numpy().T, frames[2])
    with pytest.raises(InvalidInputError, match="has 3 frames"):
        read_ultrasound(path)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp"])
def test_raster_frames_use_pillow_luma(tmp_path, suffix):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[5:10, 3:8] = (200, 40, 10)
    path = tmp_path / f"frame{suffix}"
    Image.fromarray(rgb).save(path, quality=100) if suffix == ".jpg" else Image.fromarray(rgb).save(path)
    frame = read_ultrasound(path)
    assert frame.shape == (1, 30, 20) and frame.meta["source_format"] == "raster"
    expected = np.asarray(Image.open(path).convert("L"), dtype=float)
    np.testing.assert_array_equal(frame[0].numpy().T, expected)


def test_unreadable_inputs_are_named(tmp_path):
    with pytest.raises(InputNotFoundError):
        read_ultrasound(tmp_path / "missing.png")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InvalidInputError, match="neither a DICOM"):
        read_ultrasound(tmp_path / "notes.txt")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(InvalidInputError, match="not a readable image"):
        read_ultrasound(tmp_path / "broken.png")


def test_masks_of_one_image_are_merged(tmp_path):
    a, b = np.zeros((8, 10), np.uint8), np.zeros((8, 10), np.uint8)
    a[1:3, 1:3], b[5:7, 6:9] = 255, 255
    Image.fromarray(a).save(tmp_path / "x_mask.png")
    Image.fromarray(b).save(tmp_path / "x_mask_1.png")
    merged = read_mask([tmp_path / "x_mask.png", tmp_path / "x_mask_1.png"])
    assert merged.shape == (1, 10, 8)
    np.testing.assert_array_equal(merged[0].numpy().T, ((a > 0) | (b > 0)).astype(np.uint8))
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "small_mask.png")
    with pytest.raises(InvalidInputError, match="differ in size"):
        read_mask([tmp_path / "x_mask.png", tmp_path / "small_mask.png"])


# ----------------------------------------------------------------------------------------------------- datalists
def test_busi_layout_datalist_and_split(tmp_path):
    root = write_synthetic_busi(str(tmp_path), per_group=10, size=(40, 48), seed=3, normal=3)
    items = busi_datalist(str(tmp_path))
    assert len(items) == 20 and {i["group"] for i in items} == {"benign", "malignant"}
    multi = [i for i in items if len(i["label"]) > 1]
    assert multi and all(m.endswith(("_mask.png", "_mask_1.png")) for i in multi for m in i["label"])
    assert len(busi_datalist(str(root), include_normal=True)) == 23
    split = split_datalist(items, (0.7, 0.1, 0.2), seed=5)
    assert [len(split[k]) for k in ("training", "validation", "test")] == [14, 2, 4]
    images = [i["image"] for k in split for i in split[k]]
    assert sorted(images) == sorted(i["image"] for i in items)  # each once
    for key in split:  # stratified: both groups in every list
        assert {i["group"] for i in split[key]} == {"benign", "malignant"}
    assert split == split_datalist(items, (0.7, 0.1, 0.2), seed=5)
    assert split != split_datalist(items, (0.7, 0.1, 0.2), seed=6)
    (root / "benign" / "orphan_mask.png").write_bytes((root / "benign" / "benign (1)_mask.png").read_bytes())
    with pytest.raises(InvalidInputError, match="masks without an image"):
        busi_datalist(str(tmp_path))


def test_samus_list_layout(tmp_path):
    for sub in ("Breast-BUSI", "Echo-CAMUS"):
        for folder in ("img", "label"):
            (tmp_path / sub / folder).mkdir(parents=True)
            for stem in ("a", "b"):
                Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / sub / folder / f"{stem}.png")
    (tmp_path / "MainPatient").mkdir()
    (tmp_path / "MainPatient" / "class.json").write_text(json.dumps({"Breast-BUSI": 2, "Echo-CAMUS": 4}))
    (tmp_path / "MainPatient" / "train.txt").write_text("1/Breast-BUSI/a\n3/Echo-CAMUS/b\n")
    (tmp_path / "MainPatient" / "test-Breast-BUSI.txt").write_text("Breast-BUSI/b\n")
    train = samus_list_datalist(str(tmp_path), "train")
    assert [(i["class_id"], i["binary"], i["image"]) for i in train] == [
        (1, True, "Breast-BUSI/img/a.png"),
        (3, False, "Echo-CAMUS/img/b.png"),
    ]
    test = samus_list_datalist(str(tmp_path), "test", "Breast-BUSI")
    assert test[0]["class_id"] == 1 and test[0]["label"] == "Breast-BUSI/label/b.png"
    (tmp_path / "MainPatient" / "val.txt").write_text("1/Thyroid/a\n")
    with pytest.raises(InvalidInputError, match="not in class.json"):
        samus_list_datalist(str(tmp_path), "val")


def test_select_class_binary_or_class_id():
    label = torch.tensor([[[0, 1, 3], [255, 3, 0]]])
    assert SelectClassd("label")({"label": label})["label"].sum() == 4
    picked = SelectClassd("label")({"label": label, "class_id": 3, "binary": False})["label"]
    assert picked.tolist() == [[[0, 0, 1], [0, 1, 0]]]


# -------------------------------------------------------------------------------------------------- augmentation
def test_gamma_uses_the_published_discrete_values():
    gamma = RandGammad("image", prob=1.0)
    seen = set()
    for seed in range(40):
        gamma.set_random_state(seed)
        out = gamma({"image": torch.full((1, 2, 2), 64.0)})["image"]
        g = np.log(64 / 255) / np.log(float(out[0, 0, 0]) / 255)  # out = 255 (x/255)^(1/g)
        seen.add(round(float(g), 3))
    assert seen <= {round(v / 10, 3) for v in range(10, 26)} and len(seen) > 5


def test_zoom_crop_keeps_size_and_label_values():
    t = RandZoomCropd("image", label_keys="label", size=32, max_scale=1.3, prob=1.0)
    t.set_random_state(0)
    label = torch.zeros(1, 32, 32)
    label[0, 10:20, 10:20] = 1
    out = t({"image": torch.rand(1, 32, 32) * 255, "label": label})
    assert out["image"].shape == out["label"].shape == (1, 32, 32)
    assert set(out["label"].unique().tolist()) <= {0.0, 1.0} and out["label"].sum() > label.sum()  # zoomed in


def test_contrast_blends_with_the_mean():
    t = RandContrastd("image", low=1.5, high=1.5, prob=1.0)
    x = torch.tensor([[[100.0, 120.0], [140.0, 160.0]]])
    np.testing.assert_allclose(t({"image": x})["image"].numpy(), (130 + 1.5 * (x - 130)).numpy())


def test_resize_frame_bilinear_is_antialiased_like_pillow():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (50, 70)).astype(np.uint8)  # (H, W)
    ours = ResizeFramed("image", 16, "bilinear")({"image": torch.tensor(image.T, dtype=torch.float32)[None]})["image"]
    pil = np.asarray(Image.fromarray(image).resize((16, 16), Image.BILINEAR), dtype=float)
    assert np.abs(ours[0].numpy().T - pil).mean() < 1.0  # Pillow rounds to uint8


# ------------------------------------------------------------------------------------------------------- prompts
def test_fixed_click_is_the_raster_middle_and_box_is_tight():
    label = torch.zeros(1, 10, 8)  # (X, Y)
    label[0, 2:5, 3:6] = 1  # x 2..4, y 3..5 -> raster order (y, x): (3,2) (3,3) (3,4) (4,2) (4,3) ...
    out = LabelPromptsd("label", mode="fixed")({"label": label})
    assert out["point_coords"].tolist() == [[3.0, 4.0]] and out["point_labels"].tolist() == [1]
    assert out["boxes"].tolist() == [2.0, 3.0, 4.0, 5.0]


def test_random_click_is_on_the_lesion_or_background_when_absent():
    label = torch.zeros(1, 20, 20)
    label[0, 5:8, 9:15] = 1
    t = LabelPromptsd("label", mode="random")
    for seed in range(10):
        t.set_random_state(seed)
        x, y = (int(v) for v in t({"label": label})["point_coords"][0])
        assert label[0, x, y] == 1
    empty = t({"label": torch.zeros(1, 6, 6)})
    assert empty["point_labels"].tolist() == [0] and empty["boxes"].tolist() == [0.0, 0.0, 5.0, 5.0]
    with pytest.raises(InvalidInputError, match="needs a foreground"):
        LabelPromptsd("label", empty_box="error")({"label": torch.zeros(1, 6, 6)})
    assert prompt_keys("click") == {"point_coords": "point_coords", "point_labels": "point_labels"}
    assert prompt_keys("box") == {"boxes": "boxes"}


def _frame(x: int = 40, y: int = 20):
    from monai.data import MetaTensor

    return MetaTensor(torch.zeros(1, x, y), meta={"spatial_shape": np.array([x, y]), "filename_or_obj": "f.png"})


def test_user_prompts_group_into_objects_scaled_to_the_model_frame():
    d = UserPromptsd(size=8)(
        {
            "image": _frame(),
            "points": [[10, 5], [30, 15], [20, 10]],
            "point_labels": [1, 1, 0],
            "point_classes": [1, 2, 1],
            "boxes": [[0, 0, 19, 9]],
            "box_labels": [2],
        }
    )
    # the box is object 0 (label 2) and takes the class-2 click; the class-1 clicks form object 1
    assert d["obj_labels"].tolist() == [2, 1]
    assert d["obj_has_box"].tolist() == [True, False]
    centre = lambda v, n: (v + 0.5) * 8 / n - 0.5  # noqa: E731  pixel centres stay pixel centres
    torch.testing.assert_close(
        d["obj_boxes"][0], torch.tensor([centre(0, 40), centre(0, 20), centre(19, 40), centre(9, 20)])
    )
    torch.testing.assert_close(d["obj_points"][0, 0], torch.tensor([centre(30, 40), centre(15, 20)]))
    assert d["obj_point_labels"].tolist() == [[1, -1], [1, 0]]
    assert d["out_size"].tolist() == [20, 40] and "points" not in d


@pytest.mark.parametrize(
    "prompts, match",
    [
        ({}, "no prompt"),
        ({"points": [[40, 5]]}, "outside the image"),
        ({"points": [[1, 1]], "point_labels": [2]}, "must be 1"),
        ({"boxes": [[0, 0, 5, 5]], "box_labels": [300]}, "1..255"),
        ({"points": [[1, 1], [2, 2]], "point_classes": [1]}, "1 value"),
    ],
)
def test_user_prompt_errors(prompts, match):
    with pytest.raises(InvalidInputError, match=match):
        UserPromptsd(size=8)({"image": _frame(), **prompts})


class _DiscNetwork(torch.nn.Module):
    """Fake SAM at a 16 px model frame: logits ``3 - distance`` (low-res pixels) to the object's first click, or 2
    inside its box and -5 outside."""

    low = 8

    def encode(self, images):
        return images.mean()

    def decode(self, embeddings, point_coords=None, point_labels=None, boxes=None):
        yy, xx = torch.meshgrid(torch.arange(self.low) + 0.5, torch.arange(self.low) + 0.5, indexing="ij")
        if boxes is not None:
            x0, y0, x1, y1 = (boxes[0] / 2).tolist()  # model frame 16 -> low-res 8
            inside = (xx >= x0) & (xx <= x1 + 0.5) & (yy >= y0) & (yy <= y1 + 0.5)
            return torch.where(inside, 2.0, -5.0)[None, None], None
        cx, cy = (point_coords[0, 0] / 2 + 0.25).tolist()
        return (3.0 - torch.hypot(xx - cx, yy - cy))[None, None], None


def test_object_inferer_label_map_highest_logit_wins():
    prompts = UserPromptsd(size=16)(
        {
            "image": _frame(32, 32),
            "points": [[8, 8]],
            "point_classes": [3],
            "boxes": [[4, 4, 20, 20]],
            "box_labels": [1],
        }
    )
    batch = {k: v[None] for k, v in prompts.items() if k.startswith("obj_") or k == "out_size"}
    out = ObjectPromptInferer()(torch.zeros(1, 1, 16, 16), _DiscNetwork(), **batch)
    assert out.shape == (1, 1, 32, 32)
    assert out[0, 0, 8, 8] == 3  # inside both: the click's disc (logit ~2.8) beats the box (2), whatever the order
    assert out[0, 0, 18, 18] == 1 and out[0, 0, 28, 28] == 0


# ------------------------------------------------------------------------------------------------------- metrics
def test_image_scores_on_known_masks():
    target = torch.zeros(1, 10, 10)
    target[0, 2:6, 2:6] = 1  # 16 px
    pred = torch.zeros(1, 10, 10)
    pred[0, 2:6, 2:4] = 1  # 8 px inside
    s = image_scores(pred, target, upstream_row_hd=True)
    assert s["dice"] == pytest.approx(2 * 8 / 24) and s["iou"] == pytest.approx(0.5)
    assert s["sensitivity"] == pytest.approx(0.5) and s["specificity"] == pytest.approx(1.0)
    assert s["hd95_px"] == pytest.approx(2.0)
    assert s["upstream_row_hd"] == 2.0  # rows 2..5 differ in 2 pixels each; other rows are equal


def test_row_vector_hausdorff_is_not_a_contour_distance():
    a, b = torch.zeros(6, 6), torch.zeros(6, 6)
    a[0, 0], b[5, 5] = 1, 1  # opposite corners: contour HD 7.07 px; row HD 1 (a one-pixel row vs an empty row)
    assert row_vector_hausdorff(a, b) == 1.0
