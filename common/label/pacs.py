"""MONAI Label against a DICOMweb server (a PACS such as Orthanc): series fetched as stored, labels saved as DICOM SEG.

MONAI Label's own DICOMweb datastore is used, with two changes:

- series are retrieved in the transfer syntax they are stored in (``transfer-syntax=*``), not transcoded by the
  server: MONAI Label's request asks for uncompressed data, which a PACS without a JPEG 2000 transcoder (Orthanc
  without its GDCM plugin) answers with HTTP 500; GDCM (SimpleITK) decodes them here;
- final labels (``PUT /datastore/label?tag=final``, ``/infer?output=dicom_seg``) become DICOM SEG through
  pydicom-seg, MONAI Label's ``use_itk=False`` path, instead of dcmqi's ``itkimage2segimage``, which MONAI Label
  otherwise downloads from GitHub at start-up (no PACS network has that route).

Nothing here runs for a folder of studies; :class:`common.label.app.SamBundlesApp` calls :func:`dicomweb_datastore`
when ``--studies`` is an ``http(s)://`` URL.
"""

from __future__ import annotations

from monailabel.config import settings
from monailabel.datastore import dicom as dicom_datastore
from monailabel.datastore.dicom import DICOMwebClientX, DICOMWebDatastore
from monailabel.datastore.utils import convert
from monailabel.endpoints import infer as infer_endpoint

__all__ = ["StoredSyntaxClient", "dicomweb_datastore", "seg_by_pydicom_seg", "write_seg_with_pydicom_seg"]

AS_STORED = (("application/dicom", "*"),)


class StoredSyntaxClient(DICOMwebClientX):
    """MONAI Label's DICOMweb client, retrieving series in their stored transfer syntax unless told otherwise."""

    def retrieve_series(self, *args, media_types=None, **kwargs):
        return super().retrieve_series(*args, media_types=media_types or AS_STORED, **kwargs)


def dicomweb_datastore(url: str) -> DICOMWebDatastore:
    """MONAI Label's DICOMweb datastore for ``url`` (e.g. ``http://127.0.0.1:8042/dicom-web``), configured by
    MONAI Label's settings (``MONAI_LABEL_DATASTORE_USERNAME``/``PASSWORD``, ``MONAI_LABEL_QIDO_PREFIX``, ...,
    ``MONAI_LABEL_DICOMWEB_SEARCH_FILTER``, default ``{"Modality": "CT"}``), on a :class:`StoredSyntaxClient`."""
    user = settings.MONAI_LABEL_DATASTORE_USERNAME or settings.MONAI_LABEL_DICOMWEB_USERNAME
    password = settings.MONAI_LABEL_DATASTORE_PASSWORD or settings.MONAI_LABEL_DICOMWEB_PASSWORD
    session = None
    if user and password:
        from dicomweb_client.session_utils import create_session_from_user_pass

        session = create_session_from_user_pass(user, password)
    client = StoredSyntaxClient(
        url=url,
        session=session,
        qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
        wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
        stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX,
    )
    cache = (settings.MONAI_LABEL_DATASTORE_CACHE_PATH or settings.MONAI_LABEL_DICOMWEB_CACHE_PATH).strip()
    write_seg_with_pydicom_seg()
    return DICOMWebDatastore(
        client=client,
        search_filter=settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER,
        cache_path=cache or None,
        fetch_by_frame=settings.MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME,
        convert_to_nifti=settings.MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI,
    )


def seg_by_pydicom_seg(series_dir, label, label_info, file_ext="*", use_itk=True) -> str:
    """MONAI Label's ``nifti_to_dicom_seg`` on its pydicom-seg path, whatever ``use_itk`` its caller passes: the
    label file (on the series' grid) -> a DICOM SEG file referencing the images of ``series_dir``."""
    return convert.nifti_to_dicom_seg(series_dir, label, label_info, file_ext, use_itk=False)


def write_seg_with_pydicom_seg() -> None:
    """Point the datastore's ``save_label`` and the ``/infer?output=dicom_seg`` endpoint at :func:`seg_by_pydicom_seg`
    (they look the converter up in their own modules at call time)."""
    dicom_datastore.nifti_to_dicom_seg = seg_by_pydicom_seg
    infer_endpoint.nifti_to_dicom_seg = seg_by_pydicom_seg
