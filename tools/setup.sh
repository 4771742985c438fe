#!/usr/bin/env bash
# One-time set-up on a fresh machine: a virtual environment in .venv with the CPU torch pin,
# the `common` library with its test, weights, monailabel, lint and openvino extras, and the LiteMedSAM weights placed in
# bundles/medsam/models/model.pt.  Usage: bash tools/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# The constraint keeps pip (and build isolation, e.g. sam2 under monailabel) from replacing torch with a CUDA build.
export PIP_CONSTRAINT="$PWD/constraints.txt"
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test,weights,monailabel,lint,openvino]"
.venv/bin/python tools/convert_checkpoint.py litemedsam bundles/medsam/models/model.pt
