#!/usr/bin/env bash
# Orthanc 1.10 and its DICOMweb plugin, the Debian packages `orthanc` and `orthanc-dicomweb`: the PACS of
# tests/integration/test_pacs_dicom_seg.py and of the README's "Annotating against a PACS". Debian/Ubuntu, as root
# or through sudo. The packages' system service is not started (it would listen on every interface): the test starts
# its own Orthanc inside a private network namespace, users start theirs as the README says.
set -euo pipefail
PLUGIN=/usr/share/orthanc/plugins/libOrthancDicomWeb.so
if command -v Orthanc >/dev/null && [ -f "$PLUGIN" ]; then
    echo "install_pacs: $(Orthanc --version | sed -n 1p) with its DICOMweb plugin is installed"
    exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ]; then  # "do not start services" while the packages install
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod +x "$POLICY"
    trap '$SUDO rm -f "$POLICY"' EXIT
fi
echo "install_pacs: apt-get install orthanc orthanc-dicomweb"
install() { DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends orthanc orthanc-dicomweb; }
install >/tmp/install_pacs.log 2>&1 || { $SUDO apt-get update -q >>/tmp/install_pacs.log 2>&1 && install >>/tmp/install_pacs.log 2>&1; } || {
    tail -20 /tmp/install_pacs.log
    echo "install_pacs: could not install Orthanc (log: /tmp/install_pacs.log)" >&2
    exit 1
}
echo "install_pacs: $(Orthanc --version | sed -n 1p) installed"
