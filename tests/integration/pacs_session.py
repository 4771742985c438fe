"""One annotation session against a PACS, run by ``test_pacs_dicom_seg.py`` inside a private network namespace
(``unshare --net --map-root-user``), where 127.0.0.1 is the only interface: Orthanc 1.10 cannot bind one address.

Orthanc (DICOMweb) starts, the series is stored into it over STOW-RS, the project's MONAI Label app starts with that
DICOMweb URL as its studies, MedSAM answers ``/infer`` with the ROI box, and the result is saved back as the final
label (``PUT /datastore/label?tag=final``), which the app stores in Orthanc as DICOM SEG; the same box is asked
again with ``output=dicom_seg``. Written to ``--out``: ``infer.nii.gz`` (the answer), ``seg.dcm`` (the SEG as Orthanc
serves it), ``infer_seg.dcm`` (the SEG ``/infer`` answered) and ``session.json``. Both servers stop at the end,
also on SIGTERM (checked gone).

    python pacs_session.py --series DIR --bundles DIR --roi '[i0, i1, j0, j1, k0, k1]' --out DIR
"""

from __future__ import annotations

import argparse
import fcntl
import json
import shutil
import signal
import socket
import struct
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
from label_servers import REPO, monailabel_server, orthanc_server  # noqa: E402

SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
LABEL_INFO = [{"name": "liver", "model_name": "medsam", "description": "MedSAM box prompt"}]


def interfaces() -> list[str]:
    lines = Path("/proc/net/dev").read_text().splitlines()[2:]
    return [line.split(":")[0].strip() for line in lines]


def loopback_up() -> None:
    """Bring ``lo`` up: a new network namespace starts with it down."""
    with socket.socket() as s:
        flags = struct.unpack("16sH", fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH", b"lo", 0)))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | IFF_UP))


def store_series(client, series: Path) -> None:
    import pydicom

    client.store_instances([pydicom.dcmread(str(f)) for f in sorted(series.iterdir())])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=Path, required=True)
    parser.add_argument("--bundles", type=Path, required=True)
    parser.add_argument("--roi", type=json.loads, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if interfaces() != ["lo"]:
        sys.exit(f"refusing to start Orthanc outside a private network namespace (interfaces: {interfaces()})")
    loopback_up()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped by SIGTERM"))  # the servers stop on the way out

    import pydicom
    import requests
    from dicomweb_client import DICOMwebClient

    args.out.mkdir(parents=True, exist_ok=True)
    series_uid = pydicom.dcmread(str(next(args.series.iterdir())), stop_before_pixels=True).SeriesInstanceUID
    with orthanc_server(args.out) as dicomweb:
        pacs = DICOMwebClient(url=dicomweb)
        store_series(pacs, args.series)
        app = shutil.copytree(REPO / "apps" / "sam_bundles", args.out / "sam_bundles")
        conf = {"bundles_dir": args.bundles, "models": "medsam", "skip_trainers": "true"}
        with monailabel_server(app, dicomweb, conf, args.out / "monailabel.log") as label:
            result, params = label.infer("medsam", series_uid, {"roi": args.roi})
            shutil.copyfile(result, args.out / "infer.nii.gz")
            saved = label.save_label(series_uid, result, tag="final", params={"label_info": LABEL_INFO})
            answer = requests.post(
                f"{label._server_url}/infer/medsam",
                params={"image": series_uid, "output": "dicom_seg"},
                data={"params": json.dumps({"roi": args.roi, "label_info": LABEL_INFO})},
                timeout=600,
            )
            answer.raise_for_status()
            (args.out / "infer_seg.dcm").write_bytes(answer.content)
        segs = pacs.search_for_series(search_filters={"Modality": "SEG"})
        (seg,) = [pydicom.Dataset.from_json(s) for s in segs]
        (instance,) = pacs.retrieve_series(seg.StudyInstanceUID, seg.SeriesInstanceUID)
        instance.save_as(str(args.out / "seg.dcm"))
        session = {
            "series_uid": series_uid,
            "seg_series_uid": seg.SeriesInstanceUID,
            "saved": saved,
            "infer_params": params,
        }
    (args.out / "session.json").write_text(json.dumps(session, indent=2, default=str))


if __name__ == "__main__":
    main()
