"""Real example data that installs with the dependencies (no download needed)."""

from __future__ import annotations


def ct_small_dicom() -> str:
    """Path of ``CT_small.dcm``, a real 128 x 128 axial CT slice (0.66 mm pixels) shipped by pydicom.

    It shows a thoracic vertebra, the spinal canal and the descending aorta.
    """
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    if path is None:
        raise FileNotFoundError("pydicom's test file CT_small.dcm is missing; reinstall pydicom")
    return str(path)


def ultrasound_dicom() -> str:
    """Path of ``US1_UNCR.dcm`` from ``pydicom-data`` (MIT): a real 640 x 480 RGB ultrasound frame (GE, a lymph
    node with a power-Doppler colour overlay, burnt-in text)."""
    from importlib.resources import files

    path = files("data_store") / "data" / "US1_UNCR.dcm"
    if not path.is_file():
        raise FileNotFoundError("pydicom-data's US1_UNCR.dcm is missing; pip install pydicom-data==1.0.0")
    return str(path)
