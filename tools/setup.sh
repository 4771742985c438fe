#!/usr/bin/env bash
# One-time set-up on a fresh machine: a virtual environment in .venv with the pinned torch (the CPU build on machines
# without an NVIDIA GPU), the `common` library with its test, weights, monailabel, lint and openvino extras, the
# LiteMedSAM weights placed in bundles/medsam/models/model.pt, and a check that the MONAI Label server can start.
# Usage: bash tools/setup.sh   (PYTHON=python3.12 bash tools/setup.sh for another interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_PIN="$(grep '^torch==' constraints.txt)"
CPU_WHEELS=https://download.pytorch.org/whl/cpu
step() { echo "[setup] $*"; }

step "1/5 virtual environment .venv ($("$PYTHON" --version))"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# The constraint keeps pip (and build isolation, e.g. sam2 under monailabel) from replacing torch with another build.
export PIP_CONSTRAINT="$PWD/constraints.txt"
.venv/bin/python -m pip install --quiet --upgrade pip

reachable() { .venv/bin/python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10)" "$1" \
    >/dev/null 2>&1; }
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    step "2/5 $TORCH_PIN: NVIDIA GPU found, the package index's build (CUDA; several GB)"
    .venv/bin/python -m pip install --quiet "$TORCH_PIN"
elif reachable "$CPU_WHEELS/torch/"; then
    step "2/5 $TORCH_PIN: no NVIDIA GPU, the CPU build from PyTorch's wheel index ($CPU_WHEELS)"
    .venv/bin/python -m pip install --quiet "$TORCH_PIN" --index-url "$CPU_WHEELS"
else
    step "2/5 $TORCH_PIN: no NVIDIA GPU and $CPU_WHEELS cannot be reached: the build pip finds in its configured index"
    .venv/bin/python -m pip install --quiet "$TORCH_PIN"
fi
if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.version.cuda is not None and not torch.cuda.is_available())"
then
    step "warning: this torch is a CUDA build but no GPU is usable; a CPU build is much smaller:"
    step "    .venv/bin/python -m pip install --force-reinstall --no-deps '$TORCH_PIN' --index-url $CPU_WHEELS"
fi

step "3/5 the common library and its extras (test, weights, monailabel, lint, openvino)"
.venv/bin/python -m pip install --quiet -e ".[test,weights,monailabel,lint,openvino]"

step "4/5 LiteMedSAM weights -> bundles/medsam/models/model.pt"
.venv/bin/python tools/convert_checkpoint.py litemedsam bundles/medsam/models/model.pt

step "5/5 MONAI Label server (torchvision beside torch)"
if ! .venv/bin/python -m common.label.serve --check; then
    read -r SERIES INDEX < <(.venv/bin/python -c "from common.label.serve import matching_torchvision as m; print(*m())")
    if reachable "$INDEX/torchvision/"; then
        step "installing torchvision==$SERIES from $INDEX"
        .venv/bin/python -m pip install --quiet --force-reinstall --no-deps "torchvision==$SERIES" --index-url "$INDEX"
        .venv/bin/python -m common.label.serve --check
    else
        step "set-up done, except the MONAI Label server: $INDEX cannot be reached from here (see the error above)"
        exit 0
    fi
fi
step "set-up done"
