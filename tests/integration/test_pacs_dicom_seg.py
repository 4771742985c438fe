"""MONAI Label behind a real PACS: Orthanc with DICOMweb holds the shared CT series (JPEG 2000, as shipped), the
project's app serves MedSAM from it, and the liver segmented with a box comes back into Orthanc as DICOM SEG.

The session itself (``pacs_session.py``) runs in a private network namespace, where Orthanc, which cannot bind one
address, listens on the namespace's loopback only. Here: the series made PACS-ready (the shared copy has empty
Study/Series/SOP Instance UIDs, which no PACS stores), the bundle's own answer for the same box from the DICOM folder,
and every check of what the session brought back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from label_servers import orthanc_missing
from pydicom.uid import CTImageStorage, generate_uid
from workflow_utils import box_of, dice, label_on_grid, read_dicom_series, run_inference

LIVER = 5
SESSION = Path(__file__).with_name("pacs_session.py")
SESSION_TIMEOUT_S = 900


def pacs_ready_series(source: Path, target: Path) -> str:
    """``source``'s slices with the UIDs every PACS needs (seeded: the same UIDs every run; each file's SOP Instance
    UID is the UID in its name), a patient, and the CT SOP class; pixel data untouched. Returns the Series UID."""
    study = generate_uid(entropy_srcs=["sam-bundles test study", source.name])
    series = generate_uid(entropy_srcs=["sam-bundles test series", source.name])
    target.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        ds = pydicom.dcmread(str(path))
        sop = path.name.removeprefix("CT.")
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID = (
            study,
            series,
            sop,
            CTImageStorage,
        )
        ds.file_meta.MediaStorageSOPInstanceUID, ds.file_meta.MediaStorageSOPClassUID = sop, CTImageStorage
        ds.PatientID, ds.PatientName, ds.StudyID = "TOTALSEG-EXAMPLE", "TotalSegmentator^Example", "1"
        ds.save_as(str(target / f"{sop}.dcm"))
    return series


def read_series(folder: Path) -> tuple[sitk.Image, list[str]]:
    """The series as ITK sorts it, and the SOP Instance UID of each of its slices in that order."""
    series, files = read_dicom_series(folder)
    return series, [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]


def seg_on_series(seg: pydicom.Dataset, series: sitk.Image, slice_uids: list[str]) -> np.ndarray:
    """The SEG's frames on the series' slices, ``(z, y, x)`` segment numbers. Each frame is placed by its
    ImagePositionPatient, which must be one slice's, and must name that slice as its source image."""
    orientation = [
        float(v) for v in seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    ]
    np.testing.assert_allclose(orientation, series.GetDirection()[0:7:3] + series.GetDirection()[1:8:3], atol=1e-6)
    positions = np.array([series.TransformIndexToPhysicalPoint((0, 0, k)) for k in range(series.GetDepth())])
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    volume = np.zeros(sitk.GetArrayViewFromImage(series).shape, np.uint8)
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        (k,) = np.flatnonzero(np.abs(positions - position).max(axis=1) < 1e-3)
        sources = {s.ReferencedSOPInstanceUID for d in item.DerivationImageSequence for s in d.SourceImageSequence}
        assert sources == {slice_uids[k]}
        volume[k][frame > 0] = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
    return volume


def processes_naming(folder: Path) -> list[str]:
    """Command lines of running processes that name a path under ``folder``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(folder) in text:
            found.append(text)
    return found


@pytest.fixture(scope="module")
def pacs_session(totalseg_dir, repo_root, litemedsam_weights, tmp_path_factory):
    """The session's outputs folder, the PACS-ready series folder, the liver box's ROI and the label on the series."""
    missing = orthanc_missing()
    if missing:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    root = tmp_path_factory.mktemp("pacs")
    series_uid = pacs_ready_series(totalseg_dir / "dicom", root / "series")
    series, _ = read_series(root / "series")
    liver = label_on_grid(totalseg_dir / "ct_dicom_labels.nii.gz", series) == LIVER  # (z, y, x)
    box = box_of(liver.transpose(2, 1, 0))  # [i0, j0, k0, i1, j1, k1] in the series' voxel indices
    roi = [box[0], box[3], box[1], box[4], box[2], box[5]]
    bundles = root / "bundles"
    shutil.copytree(
        repo_root / "bundles" / "medsam", bundles / "medsam", ignore=shutil.ignore_patterns("models", "eval")
    )
    (bundles / "medsam" / "models").mkdir()
    shutil.copyfile(litemedsam_weights, bundles / "medsam" / "models" / "model.pt")
    command = ["unshare", "--net", "--map-root-user", sys.executable, str(SESSION), "--series", str(root / "series")]
    command += ["--bundles", str(bundles), "--roi", json.dumps(roi), "--out", str(root / "session")]
    session = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = session.communicate(timeout=SESSION_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        session.terminate()  # the session stops both servers on SIGTERM
        output, _ = session.communicate(timeout=120)
    logs = "".join((root / "session" / name).read_text()[-3000:] for name in ("orthanc.log", "monailabel.log")
                   if (root / "session" / name).is_file())  # fmt: skip
    assert session.returncode == 0, f"{output[-4000:]}\n{logs}"
    assert not processes_naming(root), "a server of the session outlived it"
    return {"out": root / "session", "series": root / "series", "uid": series_uid, "box": box, "liver": liver}


@pytest.fixture(scope="module")
def bundle_answer(pacs_session, tmp_path_factory) -> Path:
    """What ``inference.json`` writes for the same box, reading the DICOM folder itself."""
    out = tmp_path_factory.mktemp("own")
    bundle = pacs_session["out"].parent / "bundles" / "medsam"
    request = {"image": str(pacs_session["series"]), "boxes": [pacs_session["box"]], "box_labels": [1]}
    run_inference(bundle / "configs", out, request, bundle_root=str(bundle))
    (written,) = out.glob("*_seg.nii.gz")
    return written


def test_infer_from_the_pacs_equals_the_bundle_on_the_series(pacs_session, bundle_answer):
    series, _ = read_series(pacs_session["series"])
    served = label_on_grid(pacs_session["out"] / "infer.nii.gz", series)
    own = label_on_grid(bundle_answer, series)
    np.testing.assert_array_equal(served, own)
    assert dice(own > 0, pacs_session["liver"]) > 0.85
    assert nib.load(str(pacs_session["out"] / "infer.nii.gz")).shape == sitk.GetArrayViewFromImage(series).shape[::-1]


@pytest.mark.parametrize("how", ["saved to orthanc", "infer output=dicom_seg"])
def test_dicom_seg_equals_the_bundle_answer(pacs_session, bundle_answer, how):
    """The final label saved into Orthanc (read back from it), and ``/infer``'s ``dicom_seg`` answer: SEG objects
    of the series' study, referencing its series and each slice, one frame per slice, equal to the bundle's mask."""
    session = json.loads((pacs_session["out"] / "session.json").read_text())
    seg = pydicom.dcmread(str(pacs_session["out"] / ("seg.dcm" if how == "saved to orthanc" else "infer_seg.dcm")))
    assert seg.Modality == "SEG" and seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    if how == "saved to orthanc":
        assert session["seg_series_uid"] == seg.SeriesInstanceUID != pacs_session["uid"]
    source = pydicom.dcmread(str(next(pacs_session["series"].iterdir())), stop_before_pixels=True)
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.PatientID == source.PatientID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pacs_session["uid"]
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver"]
    series, slice_uids = read_series(pacs_session["series"])
    assert int(seg.NumberOfFrames) == series.GetDepth()  # one frame per slice: empty slices are kept
    np.testing.assert_array_equal(seg_on_series(seg, series, slice_uids), label_on_grid(bundle_answer, series))
