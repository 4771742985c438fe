"""Loading state-dict files into the SAM core with clear errors.

Checkpoints are plain state dicts loaded with ``torch.load(..., weights_only=True)``. Training checkpoints that
wrap the weights (``{"model": sd}``, ``{"state_dict": sd, "epoch": ...}``) are unwrapped, and a leading
``module.`` (DataParallel/DDP) is stripped, so official SAM, MedSAM and LiteMedSAM files load without renaming.
Authors' training scripts also store numpy scalars (a best loss, ``best_tol``): exactly numpy's scalar and dtype
globals are allowed on top of the weights-only set (:func:`torch_load_weights`), nothing else.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Collection, Mapping
from pathlib import Path

import torch
from torch import nn

from common.errors import BundleInputError, InputNotFoundError

__all__ = [
    "SAM_VIT_B_HINT",
    "CheckpointError",
    "extract_state_dict",
    "load_checkpoint",
    "load_leaving_new_modules",
    "load_state_dict_file",
    "torch_load_weights",
]

#: Where users get the official SAM ViT-B weights (methods that start from SAM).
SAM_VIT_B_HINT = (
    "Download SAM ViT-B (sam_vit_b_01ec64.pth) from https://github.com/facebookresearch/segment-anything "
    "('Model Checkpoints') into the bundle's models/ folder, or set sam_checkpoint to its path."
)

_WRAPPER_KEYS = ("model", "state_dict")
_MAX_LISTED = 8


class CheckpointError(BundleInputError, RuntimeError):
    """A checkpoint could not be read as a state dict, or does not fit the model."""


def _is_tensor_mapping(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def extract_state_dict(obj, source: str = "<in-memory object>") -> dict[str, torch.Tensor]:
    """Return the ``{name: tensor}`` mapping inside ``obj`` (unwrapping ``model``/``state_dict`` entries, up to
    3 levels) with any leading ``module.`` removed. ``source`` names the origin in error messages."""
    for _ in range(4):
        if _is_tensor_mapping(obj):
            break
        if not isinstance(obj, Mapping):
            raise CheckpointError(
                f"{source}: expected a state dict (mapping of names to tensors), found {type(obj).__name__}"
            )
        inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            non_tensor = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)][:_MAX_LISTED]
            raise CheckpointError(
                f"{source}: not a state dict: {len(obj)} entries, non-tensor entries include {non_tensor}, and no "
                f"{' / '.join(repr(k) for k in _WRAPPER_KEYS)} entry holding one"
            )
        obj = inner
    else:
        raise CheckpointError(f"{source}: no state dict found within nested 'model'/'state_dict' entries")
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in obj.items()}


# A pickled numpy scalar names its reconstructor after the numpy that wrote it: numpy 1 files (e.g. the 3DSAM-adapter
# and MSA authors' checkpoints) say numpy.core.multiarray, numpy 2 files numpy._core.multiarray. torch matches names.
NUMPY_SCALAR_NAMES = ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar")


def _numpy_scalar_globals() -> list:
    """numpy's scalar reconstructor under both names, ``numpy.dtype`` and its dtype classes: what a pickled numpy
    scalar needs, whichever numpy wrote it."""
    import importlib

    import numpy as np

    name = "numpy._core.multiarray" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core.multiarray"
    scalar = importlib.import_module(name).scalar
    dtypes = getattr(np, "dtypes", None)
    classes = [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")] if dtypes is not None else []
    return [*[(scalar, alias) for alias in NUMPY_SCALAR_NAMES], np.dtype, *[c for c in classes if isinstance(c, type)]]


def torch_load_weights(path: str | os.PathLike, map_location: str | torch.device | None = "cpu"):
    """``torch.load(path, weights_only=True)`` allowing numpy scalars too; any failure becomes a
    :class:`CheckpointError` naming the file (a pickle that needs other code says so)."""
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)", str(e))
        if found:
            raise CheckpointError(
                f"{path}: refused: loading it would run code beyond tensors and numbers (it needs {found.group(1)}); "
                "save a plain state dict"
            ) from e
        why = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
        reason = why.group(1).strip() if why else "unpickling failed"
        raise CheckpointError(f"{path}: not a PyTorch checkpoint, or a damaged one ({reason})") from e
    except Exception as e:  # torch.load raises many types for corrupt files (RuntimeError, EOFError, IndexError...)
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint, or a damaged one ({type(e).__name__}: {str(e).strip()[:120]})"
        ) from e


def load_state_dict_file(
    path: str | os.PathLike, map_location: str | torch.device | None = "cpu", hint: str | None = None
) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path`` with ``torch.load(weights_only=True)`` (see :func:`extract_state_dict`).

    Raises ``FileNotFoundError`` (message names the path, plus ``hint``, e.g. where to get the weights) or
    :class:`CheckpointError` when the file is unreadable, holds no state dict, or holds NaN/infinite weights.
    """
    path = Path(path)
    if not path.is_file():
        message = f"checkpoint file not found: {path}"
        raise InputNotFoundError(f"{message}. {hint}" if hint else message)
    state = extract_state_dict(torch_load_weights(path, map_location), source=str(path))
    _require_finite(state, str(path))
    return state


def _require_finite(state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise :class:`CheckpointError` if a floating-point tensor of ``state`` holds NaN or infinite values."""
    bad = {k: int((~torch.isfinite(v)).sum()) for k, v in state.items() if v.is_floating_point()}
    bad = {k: n for k, n in bad.items() if n}
    if bad:
        first = next(iter(bad))
        raise CheckpointError(
            f"{source}: {sum(bad.values())} NaN/infinite value(s) in {len(bad)} tensor(s), first '{first}' "
            f"({bad[first]}); the file is damaged or its training diverged"
        )


def _first(items: list, n: int = _MAX_LISTED) -> str:
    shown = ", ".join(str(i) for i in items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def load_checkpoint(
    model: nn.Module,
    path_or_state_dict: str | os.PathLike | Mapping,
    strict: bool = True,
    hint: str | None = None,
    prefix: str | None = None,
    map_location: str | torch.device | None = "cpu",
    assign: bool = False,
    source: str | None = None,
):
    """Load a checkpoint file or state dict into ``model``; keys are used as they are (no renaming).

    Args:
        model: target module (e.g. :class:`Sam`, keys ``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``).
        path_or_state_dict: file path, or an (optionally wrapped) state dict.
        strict: require exactly the model's keys. Shape mismatches are always an error.
        hint: appended to the FileNotFoundError message (how to obtain the weights).
        prefix: load only keys starting with ``prefix`` (e.g. ``"image_encoder."``), with the prefix removed.
        map_location / assign: passed to ``torch.load`` / ``load_state_dict`` (``assign=True`` for meta models).
        source: names an in-memory state dict in error messages (e.g. the file it was read from).

    Returns the ``(missing_keys, unexpected_keys)`` result of ``load_state_dict``. Raises
    :class:`CheckpointError` naming the source and the first differing keys.
    """
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        source = str(path_or_state_dict)
        state = load_state_dict_file(path_or_state_dict, map_location=map_location, hint=hint)
    elif isinstance(path_or_state_dict, Mapping):
        source = source or "<in-memory state dict>"
        state = extract_state_dict(path_or_state_dict, source=source)
    else:
        raise TypeError(f"expected a checkpoint path or a state dict, got {type(path_or_state_dict).__name__}")
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise CheckpointError(f"{source}: no keys start with prefix {prefix!r}")

    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if mismatched or (strict and (missing or unexpected)):
        lines = [f"checkpoint {source} does not fit {type(model).__name__}:"]
        if missing and strict:
            lines.append(f"  {len(missing)} missing key(s): {_first(missing)}")
        if unexpected and strict:
            lines.append(f"  {len(unexpected)} unexpected key(s): {_first(unexpected)}")
        if mismatched:
            lines.append(f"  {len(mismatched)} shape mismatch(es): {_first(mismatched, 4)}")
        raise CheckpointError("\n".join(lines))
    return model.load_state_dict(state, strict=strict, assign=assign)


def load_leaving_new_modules(
    model: nn.Module, state: Mapping[str, torch.Tensor], new_keys: Collection[str], what: str = "checkpoint"
) -> None:
    """Load ``state`` into ``model`` (e.g. an official SAM checkpoint into an adapted SAM): every model key except
    ``new_keys`` must come from ``state``, none of ``new_keys`` may, and nothing may be left over; the methods'
    published loaders load non-strictly, so a wrong checkpoint would pass silently. Raises :class:`CheckpointError`
    naming the keys that break the rule (``what`` names the source)."""
    missing, unexpected = load_checkpoint(model, state, strict=False)
    if set(missing) != set(new_keys) or unexpected:
        wrong = sorted(set(missing) - set(new_keys))[:5]
        loaded_new = sorted(set(new_keys) - set(missing))[:5]
        raise CheckpointError(
            f"{what} does not fit {type(model).__name__}: missing non-new keys {wrong}, new-module keys found in "
            f"the checkpoint {loaded_new}, unexpected keys {list(unexpected)[:5]}"
        )
