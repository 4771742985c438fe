"""Helpers that bundle configs call: where the bundle is, and required files.

``"bundle_root": "$common.bundle.bundle_root()"`` lets ``python -m monai.bundle run --config_file
bundles/<name>/configs/x.json`` work from any directory: MONAI's ``ConfigWorkflow`` knows the config
folder but does not expose it to the config, so this looks it up on the running workflow. An explicit
``--bundle_root`` override still wins, because the config expression is then never evaluated.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

from common.errors import InputNotFoundError


def bundle_root(default: str = ".") -> str:
    """Parent of the ``configs/`` folder of the ``ConfigWorkflow`` being initialised, else ``default``."""
    from monai.bundle import ConfigWorkflow

    frame = inspect.currentframe()
    try:
        while frame is not None:
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, ConfigWorkflow):
                return str(Path(candidate.config_root_path).resolve().parent)
            frame = frame.f_back
    finally:
        del frame
    return default


def require_file(path: str, what: str, hint: str = "") -> str:
    """Return ``path`` if it is a file, else raise FileNotFoundError naming it, with ``hint`` on how to get it."""
    if not os.path.isfile(path):
        message = f"{what} not found: {path}."
        raise InputNotFoundError(f"{message} {hint}".strip())
    return path
