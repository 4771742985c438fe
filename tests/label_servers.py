"""Servers the MONAI Label tests start on 127.0.0.1, each in its own process group and stopped (checked gone) on exit:
``monailabel start_server`` over the project's app (started as the README says), and Orthanc with its DICOMweb
plugin (tests/ is on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import requests
from workflow_utils import free_port, process_group_alive, stop_process_group

REPO = Path(__file__).resolve().parents[1]
SERVER_START_S = 240
ORTHANC_START_S = 60
ORTHANC_PLUGINS = Path("/usr/share/orthanc/plugins")  # Debian's orthanc and orthanc-dicomweb packages


class ServerError(RuntimeError):
    """A server that exited or did not answer; the message ends with its log."""


def _wait_until(answers, process: subprocess.Popen, log: Path, what: str, limit_s: float) -> None:
    deadline = time.time() + limit_s
    while True:
        if process.poll() is not None:
            raise ServerError(f"{what} exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            answers()
            return
        except Exception:
            if time.time() > deadline:
                raise ServerError(f"{what} did not answer within {limit_s} s:\n{log.read_text()[-4000:]}") from None
            time.sleep(1)


@contextmanager
def _process_group(command: list[str], log: Path, env: dict | None = None):
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        yield process
    finally:
        stop_process_group(process, grace_s=30)
        process.wait(timeout=30)
        if process_group_alive(process.pid):
            raise ServerError(f"a process started by {command[0]} outlived it")


@contextmanager
def monailabel_server(app: Path, studies: Path | str, conf: dict, log: Path):
    """The README's server command, ``python -m common.label.serve --app app --studies studies`` (its default host,
    127.0.0.1), with the torchvision stand-in on its path; yields a ``MONAILabelClient`` once ``/info`` answers.
    ``studies`` is a folder or a DICOMweb URL."""
    from monailabel.client import MONAILabelClient

    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "tests" / "monailabel_site")  # torchvision stand-in, see sitecustomize.py
    env["MONAI_LABEL_DATASTORE_AUTO_RELOAD"] = "false"
    command = [sys.executable, "-m", "common.label.serve", "--app", str(app)]
    command += ["--studies", str(studies), "--port", str(port)]
    for key, value in conf.items():
        command += ["--conf", key, str(value)]
    with _process_group(command, log, env) as process:
        client = MONAILabelClient(f"http://127.0.0.1:{port}", tmpdir=str(log.parent))
        _wait_until(client.info, process, log, "monailabel", SERVER_START_S)
        yield client


def orthanc_missing() -> str | None:
    """Why Orthanc with DICOMweb cannot be started here (``None`` when it can)."""
    if not shutil.which("Orthanc"):
        return "Orthanc is not installed (bash tools/install_pacs.sh)"
    if not (ORTHANC_PLUGINS / "libOrthancDicomWeb.so").is_file():
        return f"the DICOMweb plugin is not in {ORTHANC_PLUGINS} (bash tools/install_pacs.sh)"
    return None


@contextmanager
def orthanc_server(folder: Path):
    """Orthanc 1.10 with its DICOMweb plugin, storage in ``folder``, its DICOM port off and HTTP for local clients
    only; yields the DICOMweb root URL. Orthanc 1.10 cannot bind one address: call this inside a private network
    namespace (``tests/integration/pacs_session.py``), where 127.0.0.1 is the only interface."""
    port = free_port()
    config = {
        "Name": "sam-bundles-test-pacs",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": port,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [str(ORTHANC_PLUGINS / "libOrthancDicomWeb.so")],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (folder / "orthanc.json").write_text(json.dumps(config, indent=2))
    with _process_group(["Orthanc", str(folder / "orthanc.json")], folder / "orthanc.log") as process:
        root = f"http://127.0.0.1:{port}"
        _wait_until(lambda: requests.get(f"{root}/system", timeout=2).raise_for_status(), process,
                    folder / "orthanc.log", "Orthanc", ORTHANC_START_S)  # fmt: skip
        yield f"{root}/dicom-web"
