"""Start the MONAI Label server of ``apps/sam_bundles`` with this interpreter, nothing activated:

    .venv/bin/python -m common.label.serve --studies /data/ct [--port 8000] [--conf models medsam ...]

runs ``monailabel start_server --app <repo>/apps/sam_bundles --host 127.0.0.1`` plus the arguments given (an
``--app`` or ``--host`` given wins). monailabel's own ``monailabel`` script runs the ``python`` first on ``PATH``,
which outside an activated virtual environment is another interpreter. monailabel imports torchvision at start-up;
a torchvision built for another torch (the package registry's CUDA build beside a CPU torch) fails there with
``operator torchvision::nms does not exist``, so that is checked first and reported with the command that fixes it.

``--check`` only checks torchvision: exit status 0 when the server can start, 1 with the fix otherwise
(``tools/setup.sh`` runs it last).
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import torch

APP = Path(__file__).resolve().parents[2] / "apps" / "sam_bundles"
PYTORCH_WHEELS = "https://download.pytorch.org/whl"


def matching_torchvision() -> tuple[str, str]:
    """The torchvision release series built for the installed torch (torch 2.m pairs with torchvision 0.(m+15)) and
    PyTorch's wheel index for its build (``.../cpu`` or ``.../cu130``)."""
    major, minor = (int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    if major != 2:
        raise RuntimeError(f"no known torchvision pairing for torch {torch.__version__}")
    cuda = torch.version.cuda
    build = "cpu" if cuda is None else "cu" + cuda.replace(".", "")
    return f"0.{minor + 15}.*", f"{PYTORCH_WHEELS}/{build}"


def torchvision_problem() -> str | None:
    """``None`` when torchvision imports beside the installed torch, else what is wrong and the command to fix it."""
    try:
        import torchvision  # noqa: F401
    except Exception as exc:  # a mismatched build raises RuntimeError from its C++ operators; absent: ImportError
        series, index = matching_torchvision()
        return (
            f"the MONAI Label server cannot start: monailabel imports torchvision, which fails beside torch "
            f"{torch.__version__} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            f"Install the torchvision built for this torch:\n"
            f'    {sys.executable} -m pip install --force-reinstall --no-deps "torchvision=={series}" '
            f"--index-url {index}"
        )
    return None


def server_arguments(arguments: list[str]) -> list[str]:
    """``monailabel`` command-line arguments: ``start_server``, this app and 127.0.0.1 unless given, then ours."""
    defaults = []
    if "--app" not in arguments:
        defaults += ["--app", str(APP)]
    if "--host" not in arguments:
        defaults += ["--host", "127.0.0.1"]
    return ["start_server", *defaults, *arguments]


def main(arguments: list[str]) -> int:
    problem = torchvision_problem()
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    if arguments == ["--check"]:
        print("MONAI Label: torchvision loads beside torch; the server can start")
        return 0
    sys.argv = ["monailabel", *server_arguments(arguments)]
    runpy.run_module("monailabel.main", run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
