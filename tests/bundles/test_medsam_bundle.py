"""medsam bundle through MONAI's bundle machinery (the model-zoo unit-test pattern): metadata and network checks,
``ConfigWorkflow`` inference and evaluation on the real CT data of ``../shared/data/totalseg_ct``, and the errors that
bad input must produce.

Box prompts are given as the bundle's users give them: inclusive voxel indices along the array axes of the file as
stored on disk, here computed with numpy from the label files.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import verify_net_in_out
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ResampleToMatchd
from workflow_utils import box_of, checked_properties, dice, expect_failure, files_left, make_workflow, run_inference

from common.data.examples import ct_small_dicom
from common.networks.sam.tiny_vit import ConvBN

CT_SMALL_BOX = [72, 0, 109, 28]  # the default input_dict of inference.json: the descending aorta on CT_small.dcm


# ---------------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny_eval_dataset(tmp_path_factory, ct3):
    """imagesTs/labelsTs with one 3-slice crop of the 3 mm volume (slices 10-12: liver and both kidneys)."""
    image, label = ct3
    root = tmp_path_factory.mktemp("medsam_eval_data")
    (root / "imagesTs").mkdir()
    (root / "labelsTs").mkdir()
    crop = image.slicer[:, :, 10:13]
    nib.save(nib.Nifti1Image(np.asarray(crop.dataobj), crop.affine), str(root / "imagesTs" / "crop.nii.gz"))
    nib.save(nib.Nifti1Image(label[:, :, 10:13].astype(np.uint8), crop.affine), str(root / "labelsTs" / "crop.nii.gz"))
    return root


# ------------------------------------------------------------------------------------- metadata, network, properties
def test_verify_net_in_out(configs):
    meta = json.loads((configs / "metadata.json").read_text())["network_data_format"]
    assert meta["inputs"]["image"]["spatial_shape"] == [256, 256] and meta["outputs"]["pred"]["num_channels"] == 1
    for prompts in ({"boxes": torch.tensor([[[32.0, 40.0, 180.0, 200.0]]])}, {}):  # boxes are optional
        verify_net_in_out(
            net_id="network_def",
            meta_file=str(configs / "metadata.json"),
            config_file=str(configs / "inference.json"),
            device="cpu",
            extra_forward_args=prompts,
        )


@pytest.mark.usefixtures("weights")
@pytest.mark.parametrize("config", ["inference.json", ["inference.json", "evaluate.json"]])
def test_infer_properties(configs, config, tiny_eval_dataset, tmp_path):
    wf = make_workflow(configs, config, "infer", dataset_dir=str(tiny_eval_dataset), output_dir=str(tmp_path))
    wf.initialize()
    assert checked_properties(wf) == []
    assert wf.bundle_root == str(configs.parent)
    wf.finalize()


# ------------------------------------------------------------------------------------------------ inference, real data
@pytest.mark.usefixtures("weights")
def test_inference_dicom_series_liver(configs, totalseg_dir, tmp_path):
    series = totalseg_dir / "dicom"
    # The label is stored with its rows flipped relative to the series: pair it through the affines.
    ref = Compose(
        [
            LoadImaged(["image", "label"], reader="ITKReader", image_only=True),
            EnsureChannelFirstd(["image", "label"]),
            ResampleToMatchd("label", "image", mode="nearest"),
        ]
    )({"image": str(series), "label": str(totalseg_dir / "ct_dicom_labels.nii.gz")})
    series_affine = ref["image"].affine.numpy()
    liver = ref["label"][0].numpy().round() == 5
    stored = np.asarray(nib.load(str(totalseg_dir / "ct_dicom_labels.nii.gz")).dataobj) == 5
    assert dice(stored, liver) < 0.9  # array-to-array the label does not fit: the geometry trap is real

    box = box_of(liver)
    out = tmp_path / "out"
    wf = make_workflow(
        configs,
        "inference.json",
        "infer",
        output_dir=str(out),
        input_dict={"image": str(series), "boxes": [box], "box_labels": [5]},
    )
    wf.initialize()
    assert checked_properties(wf) == []
    wf.run()
    wf.finalize()

    assert files_left(out) == ["dicom_seg.nii.gz"]
    seg = nib.load(str(out / "dicom_seg.nii.gz"))
    pred = np.asarray(seg.dataobj)
    assert pred.shape == (512, 512, 20) and pred.dtype == np.uint8
    np.testing.assert_allclose(seg.affine, series_affine, atol=1e-4)
    assert set(np.unique(pred).tolist()) == {0, 5}
    assert dice(pred == 5, liver) > 0.9


@pytest.mark.usefixtures("weights")
@pytest.mark.parametrize("axcodes", ["LPS", "none"])
def test_inference_nifti_boxes_follow_orientation(configs, totalseg_dir, ct3, axcodes, tmp_path):
    """Boxes in file voxel indices of a RAS file; the default pipeline works in LPS (x and y flipped) and maps the
    boxes and the prediction back, so the output lies on the input's grid and on the right organs. With
    ``axcodes`` none the arrays stay as stored; that variant runs on a slab of slices 8-14 only, to save time."""
    image, label = ct3
    path = str(totalseg_dir / "ct_abdomen_3mm.nii.gz")
    if axcodes == "none":
        label = label.copy()
        label[:, :, :8] = label[:, :, 15:] = 0
    liver, kidney_left = box_of(label == 5), box_of(label == 3)
    input_dict = {"image": path, "boxes": [liver, kidney_left], "box_labels": [5, 3]}

    out = tmp_path / "out"
    wf = run_inference(configs, out, input_dict, axcodes=axcodes)

    # What the network saw: the boxes mapped into the working array (LPS flips x and y of this RAS file).
    pre = wf.parser.get_parsed_content("preprocessing")(dict(input_dict))
    nx, ny, _ = image.shape
    if axcodes == "LPS":
        expected = [
            [nx - 1 - b[3], ny - 1 - b[4], b[2], nx - 1 - b[0], ny - 1 - b[1], b[5]] for b in (liver, kidney_left)
        ]
        assert np.sign(np.diag(pre["image"].affine.numpy())[:3]).tolist() == [-1, -1, 1]
    else:
        expected = [liver, kidney_left]
    assert pre["boxes"].tolist() == expected

    assert files_left(out) == ["ct_abdomen_3mm_seg.nii.gz"]
    seg = nib.load(str(out / "ct_abdomen_3mm_seg.nii.gz"))
    pred = np.asarray(seg.dataobj)
    assert pred.shape == image.shape == (122, 101, 30)
    np.testing.assert_allclose(seg.affine, image.affine, atol=1e-4)
    assert set(np.unique(pred).tolist()) == {0, 3, 5}
    assert not pred[:, :, label.any(axis=(0, 1)) == 0].any()  # nothing outside the boxes' slices
    assert dice(pred == 5, label == 5) > 0.8
    assert dice(pred == 3, label == 3) > 0.8


@pytest.mark.usefixtures("weights")
def test_inference_default_input(configs, tmp_path):
    """No input_dict override: pydicom's CT_small.dcm with the aorta box (a 2D box on a one-slice image); the
    encoder runs with its conv/BN pairs folded (``bundle.optimise_for_inference``)."""
    out = tmp_path / "out"
    batchnorms_run = []
    with pytest.MonkeyPatch.context() as mp:  # a folded pair never runs its BatchNorm
        mp.setattr(ConvBN, "fold", lambda self, fold=ConvBN.fold: (fold(self), batchnorms_run.append(0)))
        original = torch.nn.BatchNorm2d.forward
        mp.setattr(torch.nn.BatchNorm2d, "forward", lambda self, x: (batchnorms_run.append(1), original(self, x))[1])
        run_inference(configs, out)
    assert batchnorms_run.count(0) > 0 and batchnorms_run.count(1) == 0
    assert files_left(out) == ["CT_small_seg.nii.gz"]
    pred = np.asarray(nib.load(str(out / "CT_small_seg.nii.gz")).dataobj)
    assert pred.shape == (128, 128, 1)
    assert set(np.unique(pred).tolist()) == {0, 1}
    x0, y0, x1, y1 = CT_SMALL_BOX
    inside = pred[x0 : x1 + 1, y0 : y1 + 1].sum()
    assert inside > 100 and inside >= 0.95 * pred.sum()


@pytest.mark.usefixtures("weights")
def test_inference_2d_image_with_2d_box(configs, ct3, tmp_path):
    """A true 2D NIfTI (one axial slice of the 3 mm volume) with a 2D box [x0, y0, x1, y1]."""
    image, label = ct3
    z = 15
    path = tmp_path / "slice15.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[:, :, z], image.affine), str(path))
    ref = label[:, :, z] == 5
    out = tmp_path / "out"
    run_inference(configs, out, {"image": str(path), "boxes": [box_of(ref)], "box_labels": [5]})
    assert files_left(out) == ["slice15_seg.nii.gz"]
    seg = nib.load(str(out / "slice15_seg.nii.gz"))
    pred = np.asarray(seg.dataobj)
    assert pred.shape == (122, 101)
    # ITK reads a 2D file with a 2D geometry: the in-plane part of the affine is kept
    np.testing.assert_allclose(seg.affine[:2, :2], image.affine[:2, :2], atol=1e-4)
    np.testing.assert_allclose(seg.affine[:2, 3], image.affine[:2, 3], atol=1e-3)
    assert dice(pred == 5, ref) > 0.8


@pytest.mark.usefixtures("weights")
def test_inference_3d_box_on_one_slice(configs, totalseg_dir, ct3, tmp_path):
    """A 3D box with z0 == z1 on a volume segments that slice only."""
    image, label = ct3
    z = 15
    x0, y0, x1, y1 = box_of(label[:, :, z] == 5)
    out = tmp_path / "out"
    run_inference(
        configs,
        out,
        {"image": str(totalseg_dir / "ct_abdomen_3mm.nii.gz"), "boxes": [[x0, y0, z, x1, y1, z]], "box_labels": [5]},
    )
    pred = np.asarray(nib.load(str(out / "ct_abdomen_3mm_seg.nii.gz")).dataobj)
    assert pred.shape == image.shape
    assert np.flatnonzero(pred.any(axis=(0, 1))).tolist() == [z]
    assert dice(pred[:, :, z] == 5, label[:, :, z] == 5) > 0.8


@pytest.mark.usefixtures("weights")
def test_inference_medsam_vitb_option(configs, tmp_path):
    """ViT-B override: without its weights it stops with the MedSAM hint; with (random) weights it runs at 1024 px."""
    out = tmp_path / "out"
    missing = tmp_path / "medsam_vit_b.pt"
    text = expect_failure(
        lambda: make_workflow(
            configs,
            ["inference.json", "inference_medsam_vitb.json"],
            "infer",
            output_dir=str(out),
            ckpt_path=str(missing),
        ),
        out,
        "model weights not found",
        str(missing),
        "bowang-lab/MedSAM",
        "convert_checkpoint.py medsam",
    )
    assert "litemedsam" not in text.lower()

    from common.networks.medsam import build_medsam_vit_b

    torch.manual_seed(0)
    torch.save(build_medsam_vit_b().state_dict(), str(missing))
    try:
        wf = run_inference(configs, out, extra=["inference_medsam_vitb.json"], ckpt_path=str(missing))
    finally:
        missing.unlink()  # 375 MB
    net, inferer = wf.parser.get_parsed_content("network"), wf.parser.get_parsed_content("inferer")
    assert tuple(net.image_size) == (1024, 1024) and inferer.image_size == 1024 and not inferer.keep_aspect_ratio
    assert sum(p.numel() for p in net.parameters()) == 93_735_472
    assert files_left(out) == ["CT_small_seg.nii.gz"]
    pred = np.asarray(nib.load(str(out / "CT_small_seg.nii.gz")).dataobj)
    assert pred.shape == (128, 128, 1) and set(np.unique(pred).tolist()) <= {0, 1}


# -------------------------------------------------------------------------------------------------------- evaluation
@pytest.mark.usefixtures("weights")
def test_evaluate_tiny(configs, tiny_eval_dataset, tmp_path):
    out = tmp_path / "eval"
    wf = make_workflow(
        configs,
        ["inference.json", "evaluate.json"],
        "infer",
        dataset_dir=str(tiny_eval_dataset),
        output_dir=str(out),
        structures={"3": "kidney_left", "5": "liver"},
    )
    wf.initialize()
    assert checked_properties(wf) == []
    wf.run()
    wf.finalize()
    assert files_left(out) == ["metrics.csv", "metrics.json"]
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    protocols = ["propagation", "propagation label map", "slices", "slices label map"]
    assert sorted((r["protocol"], r["structure"]) for r in rows) == [
        (p, s) for p in protocols for s in ("kidney_left", "liver")
    ]
    assert all(r["case"].startswith("crop") for r in rows)
    assert all(float(r["dice"]) > 0.7 and 0.0 <= float(r["nsd"]) <= 1.0 for r in rows), rows
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    assert summary["propagation"]["liver"]["cases"] == summary["propagation label map"]["liver"]["cases"] == 1


# ------------------------------------------------------------------------------------------------------- bad input
@pytest.fixture
def bad_inputs(tmp_path, totalseg_dir):
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"this is not a NIfTI file" * 8)
    nan = np.zeros((12, 10, 4), np.float32)
    nan[3, 4, 2] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), str(tmp_path / "with_nan.nii.gz"))
    ct_small = ct_small_dicom()
    x0, y0, x1, y1 = CT_SMALL_BOX
    return {
        "missing image": (
            {"image": str(tmp_path / "missing.nii.gz"), "boxes": [[0, 0, 0, 1, 1, 1]]},
            {},
            ["'image'", "input not found", "missing.nii.gz"],
        ),
        "unreadable file": ({"image": str(garbage), "boxes": [[0, 0, 0, 1, 1, 1]]}, {}, [str(garbage)]),
        "3D box on a 2D image": (
            {"image": ct_small, "boxes": [[x0, y0, 0, x1, y1, 0]]},
            {},
            ["'boxes'", "CT_small.dcm", "volume is required"],
        ),
        "inverted box": ({"image": ct_small, "boxes": [[x1, y0, x0, y1]]}, {}, ["'boxes'", "CT_small.dcm", "inverted"]),
        "box outside": (
            {"image": ct_small, "boxes": [[x0, y0, x1, 128]]},
            {},
            ["'boxes'", "CT_small.dcm", "outside the image", "[127, 127, 0]"],
        ),
        "NaN voxels": (
            {"image": str(tmp_path / "with_nan.nii.gz"), "boxes": [[0, 0, 0, 1, 1, 1]]},
            {},
            ["'image'", "with_nan.nii.gz", "1 NaN/infinite voxels"],
        ),
        "missing weights": (
            None,
            {"ckpt_path": str(tmp_path / "no_model.pt")},
            ["model weights not found", "no_model.pt", "convert_checkpoint.py litemedsam"],
        ),
    }


@pytest.mark.usefixtures("weights")
@pytest.mark.parametrize(
    "case",
    [
        "missing image",
        "unreadable file",
        "3D box on a 2D image",
        "inverted box",
        "box outside",
        "NaN voxels",
        "missing weights",
    ],
)
def test_inference_bad_input(configs, bad_inputs, case, tmp_path):
    input_dict, override, fragments = bad_inputs[case]
    out = tmp_path / "out"
    if input_dict is not None:
        override = {**override, "input_dict": input_dict}
    expect_failure(
        lambda: make_workflow(configs, "inference.json", "infer", output_dir=str(out), **override), out, *fragments
    )


@pytest.mark.usefixtures("weights")
def test_evaluate_empty_reference_label(configs, totalseg_dir, ct3, tmp_path):
    image, _ = ct3
    data = tmp_path / "data"
    (data / "imagesTs").mkdir(parents=True)
    (data / "labelsTs").mkdir()
    (data / "imagesTs" / "case.nii.gz").symlink_to(totalseg_dir / "ct_abdomen_3mm.nii.gz")
    empty = data / "labelsTs" / "case.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(image.shape, np.uint8), image.affine), str(empty))
    out = tmp_path / "eval"
    expect_failure(
        lambda: make_workflow(
            configs, ["inference.json", "evaluate.json"], "infer", dataset_dir=str(data), output_dir=str(out)
        ),
        out,
        str(empty),
        "empty label",
    )


def test_atomic_save_leaves_nothing_behind(tmp_path, monkeypatch):
    """A failure while writing removes the temporary file and leaves no output."""
    from common.transforms import io

    def failing_save(img, filename):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(io.nib, "save", failing_save)
    pred = MetaTensor(torch.ones(1, 4, 4, 2), meta={"filename_or_obj": "case.nii.gz", "affine": torch.eye(4)})
    with pytest.raises(OSError, match="disk full"):
        io.AtomicSaveImaged("pred", output_dir=str(tmp_path))({"pred": pred})
    assert files_left(tmp_path) == []
