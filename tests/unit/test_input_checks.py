"""Damaged inputs and harmful config values are refused before anything is read or written (issue 14):
``common.data.image_files``, ``common.config_checks``, ``bundle.guard_finite_outputs``, box-label parsing."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from common import bundle
from common.config_checks import check_cli_overrides, device, label_value, one_of, positive, value_range
from common.data.examples import ct_small_dicom
from common.data.image_files import check_image_path
from common.errors import InvalidInputError
from common.networks.sam import build_tiny_sam
from common.transforms.geometry import _numeric

NIFTI = "ct_abdomen_3mm.nii.gz"  # in the shared CT folder (the ``totalseg_dir`` fixture)
SERIES = "dicom"  # 20 JPEG 2000 slices, 2 mm apart


def _copy_series(tmp_path: Path, ct: Path, name: str) -> tuple[Path, list[Path]]:
    folder = tmp_path / name
    shutil.copytree(ct / SERIES, folder)
    return folder, sorted(folder.iterdir())


def _native_series(folder: Path, slices: int = 3, cut_last: int = 0) -> Path:
    """A tiny uncompressed CT series (4x4 pixels, 2 mm apart); the last file's pixel data ``cut_last`` bytes short."""
    folder.mkdir()
    series = pydicom.uid.generate_uid()
    for z in range(slices):
        meta = pydicom.dataset.FileMetaDataset()
        meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
        meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds = pydicom.dataset.FileDataset(str(folder / f"{z}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID = (
            meta.MediaStorageSOPClassUID,
            meta.MediaStorageSOPInstanceUID,
            series,
        )
        ds.Rows = ds.Columns = 4
        ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 16, 15, 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 2.0 * z], [1, 0, 0, 0, 1, 0]
        pixels = np.zeros((4, 4), np.int16).tobytes()
        ds.PixelData = pixels[: len(pixels) - cut_last] if z == slices - 1 else pixels
        ds.save_as(folder / f"{z}.dcm", write_like_original=False)
    return folder


def _nifti(path: Path, shape) -> Path:
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), str(path))
    return path


def test_whole_real_inputs_pass(totalseg_dir):
    check_image_path(totalseg_dir / NIFTI)
    check_image_path(totalseg_dir / SERIES)


def test_whole_inputs_pass(tmp_path):
    check_image_path(ct_small_dicom())  # one DICOM file
    check_image_path(_native_series(tmp_path / "native"))
    check_image_path(_nifti(tmp_path / "2d.nii.gz", (5, 6)))
    (tmp_path / "clip.mp4").write_bytes(b"\0\0\0\x18ftypmp42")  # a video: left to its decoder
    check_image_path(tmp_path / "clip.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(InvalidInputError, match="empty.mp4 is an empty file"):
        check_image_path(tmp_path / "empty.mp4")


def _truncated_gz(tmp_path, ct):
    data = (ct / NIFTI).read_bytes()
    (tmp_path / "half.nii.gz").write_bytes(data[: len(data) // 2])
    return tmp_path / "half.nii.gz", "gzip stream does not inflate"


def _header_only(tmp_path, ct):
    raw = gzip.decompress((ct / NIFTI).read_bytes())
    (tmp_path / "hdr.nii.gz").write_bytes(gzip.compress(raw[:352]))
    return tmp_path / "hdr.nii.gz", "is truncated: 352 bytes .* the header declares 739,320"


def _short_plain_nifti(tmp_path, ct):
    raw = gzip.decompress((ct / NIFTI).read_bytes())
    (tmp_path / "short.nii").write_bytes(raw[: len(raw) // 2])
    return tmp_path / "short.nii", "short.nii is truncated"


def _empty(tmp_path):
    (tmp_path / "empty.nrrd").write_bytes(b"")
    return tmp_path / "empty.nrrd", "empty.nrrd is an empty file"


def _text_as_nifti(tmp_path):
    (tmp_path / "notes.nii.gz").write_text("not an image")
    return tmp_path / "notes.nii.gz", "notes.nii.gz is not a readable NIfTI file"


def _unknown_format(tmp_path):
    (tmp_path / "scan.bin").write_bytes(b"\x01\x02" * 500)
    return tmp_path / "scan.bin", "scan.bin is not an image file ITK can read"


def _four_d(tmp_path):
    return _nifti(tmp_path / "4d.nii.gz", (4, 4, 4, 2)), r"4d.nii.gz is a 4-D image \(shape \(4, 4, 4, 2\)\)"


def _zero_size(tmp_path):
    return _nifti(tmp_path / "zero.nii.gz", (4, 0, 4)), r"zero.nii.gz has a zero-size axis \(shape \(4, 0, 4\)\)"


def _two_series(tmp_path, ct):
    folder, files = _copy_series(tmp_path, ct, "two")
    other = pydicom.dcmread(files[0])
    other.SeriesInstanceUID, other.SeriesDescription = "1.2.3.4", "scout"
    other.save_as(folder / "scout.dcm")
    return folder, r"holds 2 DICOM series .*1\.2\.3\.4 \(1 files, 'scout'\)"


def _missing_slice(tmp_path, ct):
    folder, files = _copy_series(tmp_path, ct, "gap")
    files[7].unlink()
    return folder, "a gap of 4 mm between .* slices are missing"


def _repeated_slice(tmp_path, ct):
    folder, files = _copy_series(tmp_path, ct, "dup")
    shutil.copy(files[3], folder / "copy.dcm")
    return folder, "1 slice position.s. repeat"


def _cut_compressed_slice(tmp_path, ct):
    folder, files = _copy_series(tmp_path, ct, "cut")
    data = files[5].read_bytes()
    files[5].write_bytes(data[:-2000])
    return folder, f"{files[5].name} is truncated: it has no complete pixel data"


def _cut_native_slice(tmp_path):
    return _native_series(tmp_path / "native_cut", cut_last=8), r"2.dcm is truncated: 24 bytes of pixel data, 32"


def _nifti_folder(tmp_path, ct):
    (tmp_path / "niftis").mkdir()
    shutil.copy(ct / NIFTI, tmp_path / "niftis")
    return tmp_path / "niftis", "holds no DICOM image files; it holds 1 other file.s., e.g. ct_abdomen_3mm.nii.gz"


#: Damaged inputs made from nothing: ``make(tmp_path)``.
BAD_INPUTS = [_empty, _text_as_nifti, _unknown_format, _four_d, _zero_size, _cut_native_slice]
#: Damaged copies of the shared real CT: ``make(tmp_path, ct)``.
BAD_REAL_INPUTS = [
    _truncated_gz,
    _header_only,
    _short_plain_nifti,
    _two_series,
    _missing_slice,
    _repeated_slice,
    _cut_compressed_slice,
    _nifti_folder,
]


@pytest.mark.parametrize("make", BAD_INPUTS, ids=[m.__name__.strip("_") for m in BAD_INPUTS])
def test_damaged_inputs_are_refused_naming_the_file(tmp_path, make):
    path, message = make(tmp_path)
    with pytest.raises(InvalidInputError, match=message):
        check_image_path(path, "image")


@pytest.mark.parametrize("make", BAD_REAL_INPUTS, ids=[m.__name__.strip("_") for m in BAD_REAL_INPUTS])
def test_damaged_real_inputs_are_refused_naming_the_file(tmp_path, totalseg_dir, make):
    path, message = make(tmp_path, totalseg_dir)
    with pytest.raises(InvalidInputError, match=message):
        check_image_path(path, "image")


def test_config_value_checks():
    assert label_value(255) == 255 and value_range([-175, 250], "hu_range") == (-175.0, 250.0)
    assert positive(63.4, "intensity_std") == 63.4 and one_of("published", "g", ("per_token", "published"))
    for bad in (300, 0, -1, 2.5, "liver", True):
        with pytest.raises(InvalidInputError, match="'output_label' must be an integer label in 1..255"):
            label_value(bad)
    for bad in ([250, -175], [1, 1], [0], "0,1", [0, float("nan")]):
        with pytest.raises(InvalidInputError, match="'hu_range'"):
            value_range(bad, "hu_range")
    for bad in (0, -2.0, float("inf"), "1"):
        with pytest.raises(InvalidInputError, match="'intensity_std'"):
            positive(bad, "intensity_std")
    with pytest.raises(InvalidInputError, match=r"'depth_grouping' must be one of \['per_token', 'published'\]"):
        one_of("upstream", "depth_grouping", ("per_token", "published"))
    assert device("cpu") == torch.device("cpu")
    for bad, message in (("gpu", "not a device"), ("cuda", "no CUDA GPU")):
        if bad == "cuda" and torch.cuda.is_available():
            continue
        with pytest.raises(InvalidInputError, match=message):
            device(bad)


def test_cli_overrides_must_name_config_keys(tmp_path):
    config = tmp_path / "inference.json"
    config.write_text('{"output_dir": "x", "network_def": {"_target_": "Net", "size": 2}, "items": [{"a": 1}]}')
    run = ["run", "--config_file", str(config)]
    check_cli_overrides([*run, "--output_dir", "y", "--network_def#size", "3", "--network_def#depth=4"])
    check_cli_overrides([*run, "--items#0#a", "2", "--logging_file", "False", "--meta_file", "m.json"])
    check_cli_overrides(["download", "--ouput_dir", "y"])  # not a run: not checked
    with pytest.raises(
        InvalidInputError, match=r"'--ouput_dir' is not a key of .*inference.json \(did you mean '--output_dir'\?\)"
    ):
        check_cli_overrides([*run, "--ouput_dir", "y"])
    with pytest.raises(InvalidInputError, match="'--network#size' is not a key"):
        check_cli_overrides([*run, "--network#size", "3"])
    listed = f"['{config}', '{config}']"
    with pytest.raises(InvalidInputError, match="'--devcie' is not a key"):
        check_cli_overrides(["run", "--config_file", listed, "--devcie=cpu"])
    if not torch.cuda.is_available():
        config.write_text('{"device": "cpu"}')
        with pytest.raises(InvalidInputError, match="'device': 'cuda' asked for"):
            check_cli_overrides([*run, "--device", "cuda"])


def test_a_stage_returning_nan_stops_the_run_before_any_mask():
    torch.manual_seed(0)
    sam = build_tiny_sam().eval()
    bundle.guard_finite_outputs(sam)
    bundle.guard_finite_outputs(sam)  # idempotent: one hook per stage
    assert len(sam.image_encoder._forward_hooks) == 1 and len(sam._forward_hooks) == 1
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        sam.image_encoder(image)  # finite: passes
        sam.image_encoder.neck[0].weight.fill_(3e38)  # finite weights whose output overflows
        with pytest.raises(
            bundle.NonFiniteOutputError,
            match=r"the network's image_encoder \(ImageEncoderViT\) returned \d+ NaN/infinite",
        ):
            sam.image_encoder(image)


def test_box_labels_must_be_numbers():
    assert _numeric([1, 2]).tolist() == [1.0, 2.0] and _numeric(torch.tensor([3])).tolist() == [3.0]
    for bad in (["liver"], [True], [float("nan")], [1, "2"]):
        assert _numeric(bad) is None
