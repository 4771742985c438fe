"""samihs_ich bundle (SAMIHS) through MONAI's bundle machinery, with a tiny network.

No CT-ICH or INSTANCE data offline: training and evaluation run on a synthetic CT-ICH layout (small int16 volumes,
two haemorrhage slices per patient) with patient-level folds, which proves the slice pipeline, prompts, loss,
validation and the per-slice / per-patient report, not ICH accuracy. Inference runs on the real lesion volumes of
``../shared/data/lesions`` (a brain MR and a chest CT, NRRD) and the CT DICOM series of ``../shared/data/totalseg_ct``
with clicks and boxes in file voxel indices.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from ignite.engine import Events
from monai.transforms import LoadImage
from workflow_utils import (
    checked_properties,
    expect_failure,
    files_left,
    load_strict,
    make_workflow,
    network_def,
    run_inference,
    run_workflow,
    save_weights,
    train_with_torchrun,
    verify_clicked_2d_net,
)

from common.data import ich
from common.networks import samihs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_ich_data import write_layout  # noqa: E402  (the synthetic CT-ICH layout of the datalist tests)
from test_samihs import tiny_sam_checkpoint  # noqa: E402  (the tiny SAM checkpoint of the network tests)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/bundles/conftest.py

TINY = samihs.TINY_SIZES
TINY_NET = network_def("common.networks.samihs.build_samihs", TINY)
TINY_LOW = 4 * TINY["image_size"] // TINY["patch_size"]
TINY_CFG = {"network_def": TINY_NET, "image_size": TINY["image_size"], "num_workers": 0}


@pytest.fixture(scope="module")
def configs(repo_root) -> Path:
    return repo_root / "bundles" / "samihs_ich" / "configs"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Synthetic CT-ICH (8 x 8 x 6 volumes, 9 patients) and a patient-level fold datalist."""
    root = write_layout(tmp_path_factory.mktemp("ich"), "bcihm", patients=9)
    slices = ich.slice_datalist(str(root), ich.volume_datalist(str(root), "bcihm"))
    (root / "datalist.json").write_text(json.dumps(ich.fold_datalists(slices, fold=0, num_folds=3, val_fraction=0.2)))
    return root


def data_override(dataset: Path) -> dict:
    return {"dataset_dir": str(dataset), "datalist_file": str(dataset / "datalist.json"), "label_size": 8, **TINY_CFG}


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_weights(tmp_path_factory.mktemp("samihs_weights"), samihs.build_samihs(**TINY).state_dict())


def test_verify_net_in_out(configs):
    verify_clicked_2d_net(configs, TINY_NET, TINY["image_size"], TINY_LOW)


def test_metadata_matches_published_sizes(configs):
    meta = json.loads((configs / "metadata.json").read_text())
    assert "4,238,992 of 93,909,904" in meta["description"]
    train = json.loads((configs / "train.json").read_text())
    published = (
        train["image_size"],
        train["label_size"],
        train["low_res_size"],
        train["batch_size"],
        train["learning_rate"],
    )
    assert published == (1024, 512, 256, 2, 5e-4) and train["lr_step_epochs"] == 30


def test_published_optimiser_and_schedule(configs):
    """Adam 5e-4 (betas 0.9/0.999, no weight decay) on the trainable set only, halved every 30 epochs, stepped once
    per epoch (LrScheduleHandler's default)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(configs / "train.json"))
    parser.update({"network_def#device": "meta"})
    optimizer = parser.get_parsed_content("optimizer")
    group = optimizer.param_groups[0]
    assert type(optimizer) is torch.optim.Adam and group["betas"] == (0.9, 0.999) and group["weight_decay"] == 0
    assert sum(p.numel() for p in group["params"]) == 4_238_992
    (handler,) = [h for h in parser["train"]["handlers"] if h["_target_"] == "LrScheduleHandler"]
    assert handler.get("epoch_level", True)
    scheduler = parser.get_parsed_content("lr_scheduler")
    rates = []
    for _ in range(61):
        rates.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    assert (rates[0], rates[29], rates[30], rates[59], rates[60]) == (5e-4, 5e-4, 2.5e-4, 2.5e-4, 1.25e-4)


def test_brain_window_option_reaches_training_evaluation_and_inference(configs, dataset):
    """One ``window`` key switches the slice preprocessing of every config (published percentile clip by default)."""
    from monai.bundle import ConfigParser

    from common.methods.samihs import SliceToModeld

    def windows(files: list[str], section: str, **override) -> list:
        parser = ConfigParser()
        parser.read_config([str(configs / f) for f in files])
        parser.update({**data_override(dataset), **override})
        transforms = parser.get_parsed_content(section).transforms
        return [t.window for t in transforms if isinstance(t, SliceToModeld)]

    assert windows(["train.json"], "train#preprocessing") == [None]
    assert windows(["train.json"], "train#preprocessing", window="brain") == ["brain"]
    layered = ["inference.json", "evaluate.json"]
    assert windows(layered, "preprocessing", window=[40, 80]) == [[40, 80]]
    parser = ConfigParser()
    parser.read_config(str(configs / "inference.json"))
    parser.update({"window": "brain"})
    assert parser.get_parsed_content("inferer").window == "brain"


def test_train_from_sam(configs, dataset, tmp_path):
    sam = save_weights(tmp_path, tiny_sam_checkpoint(seed=1), "sam.pth")
    wf = make_workflow(
        configs,
        "train.json",
        "train",
        **{
            **data_override(dataset),
            "ckpt_dir": str(tmp_path / "ckpt"),
            "output_dir": str(tmp_path / "runs"),
            "low_res_size": TINY_LOW,
            "sam_checkpoint": str(sam),
            "epochs": 2,
        },
    )
    wf.initialize()
    assert checked_properties(wf) == []
    net = wf.parser.get_parsed_content("network")
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    wf.run()
    wf.finalize()
    assert files_left(tmp_path / "ckpt") == ["model.pt"]
    saved = load_strict(tmp_path / "ckpt" / "model.pt", samihs.build_samihs(**TINY))
    sam_state = torch.load(str(sam), weights_only=True)
    encoder_sam = {k for k in sam_state if k.startswith("image_encoder.")}
    parameters = {n for n, _ in net.named_parameters()}
    decoders = {k for k in parameters if k.startswith(("prompt_encoder.", "mask_decoder."))}
    assert trainable == set(samihs.new_module_keys(net)) | decoders
    assert all(torch.equal(saved[k], sam_state[k]) for k in encoder_sam)  # SAM's encoder stays frozen
    assert any(not torch.equal(saved[k], sam_state[k]) for k in sam_state if k.startswith("mask_decoder."))


@pytest.mark.parametrize("empty_click", ["none", "background"])
def test_evaluate_reports_slices_positive_slices_and_patients(configs, dataset, tiny_weights, tmp_path, empty_click):
    out = tmp_path / "eval"
    wf = make_workflow(
        configs,
        ["inference.json", "evaluate.json"],
        "infer",
        output_dir=str(out),
        ckpt_path=str(tiny_weights),
        empty_click=empty_click,
        **data_override(dataset),
    )
    wf.initialize()
    assert checked_properties(wf) == []
    labels = []
    wf.evaluator.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: labels.extend(int(b["point_labels"][0]) for b in e.state.batch)
    )
    wf.run()
    wf.finalize()
    assert files_left(out) == ["metrics.csv", "metrics.json"]
    report = json.loads((out / "metrics.json").read_text())
    test = json.loads((dataset / "datalist.json").read_text())["test"]
    assert [(r["image"], r["slice"]) for r in report["rows"]] == [(t["patient"], t["slice"]) for t in test]
    assert {"positive_slices", "volumes"} <= set(report["summary"])
    assert report["summary"]["volumes"]["dice_3d"]["images"] == len({t["patient"] for t in test})
    empty_label = -1 if empty_click == "none" else 0  # no GT-derived prompt on empty slices (default) vs upstream
    assert sorted(set(labels)) == sorted({1, empty_label})


@pytest.mark.parametrize(
    "name, prompt, prompted",
    [
        ("brain1", {"points": [[190, 102, 15]]}, {15}),
        ("brain1", {"boxes": [[170, 85, 13, 210, 125, 16]]}, {13, 14, 15, 16}),
        ("lung1", {"points": [[260, 300, 33], [100, 100, 33]], "point_labels": [1, 0]}, {33}),
    ],
    ids=["brain_click", "brain_box", "lung_clicks"],
)
def test_inference_on_real_lesion_volumes(configs, tiny_weights, tmp_path, lesions_dir, name, prompt, prompted):
    """NRRD volume + clicks/boxes in file voxel indices -> a NIfTI label volume on the input's grid (its exact
    affine: brain1's y axis runs backwards and its origin is not zero); only the prompted slices can hold labels."""
    image = lesions_dir / f"{name}_image.nrrd"
    out = tmp_path / "out"
    wf = run_inference(configs, out, {"image": str(image), **prompt}, ckpt_path=str(tiny_weights), **TINY_CFG)
    assert checked_properties(wf) == []
    assert files_left(out) == [f"{name}_image_seg.nii.gz"]
    seg = nib.load(str(out / f"{name}_image_seg.nii.gz"))
    ref = sitk.ReadImage(str(image))
    assert seg.shape == ref.GetSize()
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(ref.GetDirection()).reshape(3, 3) * np.asarray(ref.GetSpacing())
    lps[:3, 3] = ref.GetOrigin()
    np.testing.assert_allclose(seg.affine, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, atol=1e-4)  # RAS of the file's LPS
    data = np.asarray(seg.dataobj)
    assert {int(z) for z in np.nonzero(data.any(axis=(0, 1)))[0]} <= prompted


def test_inference_on_a_dicom_series(configs, tiny_weights, tmp_path, totalseg_dir):
    """A DICOM series folder (20 CT slices, one file each) with a click on slice 2 and a box over slices 12-14, in
    the series' voxel indices as ITK reads it: the label volume lies on the series' grid (its affine) and only the
    prompted slices, each of them, hold labels (slices taken from the other end of the stack would be 17 and 5-7)."""
    series = totalseg_dir / "dicom"
    out = tmp_path / "out"
    prompt = {"points": [[256, 300, 2]], "boxes": [[180, 250, 12, 330, 380, 14]]}
    wf = run_inference(configs, out, {"image": str(series), **prompt}, ckpt_path=str(tiny_weights), **TINY_CFG)
    assert checked_properties(wf) == []
    assert files_left(out) == ["dicom_seg.nii.gz"]
    seg = nib.load(str(out / "dicom_seg.nii.gz"))
    reference = LoadImage(reader="ITKReader", image_only=True)(str(series))
    assert seg.shape == tuple(reference.shape) == (512, 512, 20)
    np.testing.assert_allclose(seg.affine, reference.affine.numpy(), atol=1e-4)
    labelled = {int(z) for z in np.nonzero(np.asarray(seg.dataobj).any(axis=(0, 1)))[0]}
    assert labelled == {2, 12, 13, 14}


@pytest.mark.parametrize("prompt, fragment", [({"points": [[300, 10, 3]]}, "outside the image"), ({}, "no prompt")])
def test_inference_bad_prompts_write_nothing(configs, tiny_weights, tmp_path, lesions_dir, prompt, fragment):
    out = tmp_path / "out"
    expect_failure(
        lambda: make_workflow(
            configs,
            "inference.json",
            "infer",
            output_dir=str(out),
            input_dict={"image": str(lesions_dir / "brain1_image.nrrd"), **prompt},
            ckpt_path=str(tiny_weights),
            **TINY_CFG,
        ),
        out,
        fragment,
    )


def test_default_inference_input_runs(configs, tiny_weights, tmp_path):
    """The built-in default (pydicom's one-slice CT_small.dcm, a click at its centre): a smoke run of the defaults."""
    out = tmp_path / "out"
    run_workflow(
        make_workflow(configs, "inference.json", "infer", output_dir=str(out), ckpt_path=str(tiny_weights), **TINY_CFG)
    )
    assert files_left(out) == ["CT_small_seg.nii.gz"]


def test_fine_tune_on_real_lesion_slices_raises_dice_on_the_others(configs, tiny_weights, lesions_dir, tmp_path):
    """The real brain-MR lesion (7 slices): trained from a seeded random tiny SAMIHS at 64 px with the published click
    prompts on 4 of its slices (11, 13, 15, 17; the checkpoint picked on them), the 3 slices in between, never seen,
    go from Dice ~0.01 to above 0.3 (mean). Proves the slice pipeline, prompts, loss and optimiser learn a real
    lesion's appearance at reduced size; not ICH accuracy. Adam 3e-3 and 300 epochs instead of the published 5e-4 / 200:
    a random network at 64 px needs them."""
    image, label = str(lesions_dir / "brain1_image.nrrd"), str(lesions_dir / "brain1_label.nrrd")

    def items(slices):
        return [{"image": image, "label": label, "patient": "brain1", "slice": z, "positive": True} for z in slices]

    datalist = tmp_path / "datalist.json"
    seen, unseen = [11, 13, 15, 17], [12, 14, 16]
    datalist.write_text(json.dumps({"training": items(seen), "validation": items(seen), "test": items(unseen)}))
    data = {**TINY_CFG, "dataset_dir": "/", "datalist_file": str(datalist), "label_size": TINY["image_size"]}

    def unseen_dice(weights: Path) -> float:
        out = tmp_path / f"eval_{weights.parent.name}"
        run_workflow(
            make_workflow(
                configs,
                ["inference.json", "evaluate.json"],
                "infer",
                output_dir=str(out),
                ckpt_path=str(weights),
                **data,
            )
        )
        rows = json.loads((out / "metrics.json").read_text())["rows"]
        assert [r["slice"] for r in rows] == unseen
        return float(np.mean([r["dice"] for r in rows]))

    before = unseen_dice(tiny_weights)
    wf = make_workflow(
        configs,
        "train.json",
        "train",
        **{
            **data,
            "ckpt_dir": str(tmp_path / "ckpt"),
            "output_dir": str(tmp_path / "runs"),
            "low_res_size": TINY_LOW,
            "epochs": 300,
            "learning_rate": 3e-3,
            "init_from_sam": False,
            "load_pretrain": True,
            "pretrained_path": str(tiny_weights),
            "cache_rate": 1.0,
        },
    )
    run_workflow(wf)
    after = unseen_dice(tmp_path / "ckpt" / "model.pt")
    assert before < 0.05 and after > 0.3 and after > before + 0.25, (before, after)


def test_multi_gpu_train_torchrun_gloo(configs, repo_root, dataset, tmp_path):
    overrides = {**data_override(dataset), "low_res_size": TINY_LOW, "epochs": 1, "init_from_sam": False}
    train_with_torchrun(configs, repo_root, tmp_path, overrides, samihs.build_samihs(**TINY))
