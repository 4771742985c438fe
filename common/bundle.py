"""Helpers that bundle configs call: where the bundle is, required files, and loading the network's weights.

``"bundle_root": "$common.bundle.bundle_root()"`` lets ``python -m monai.bundle run --config_file
bundles/<name>/configs/x.json`` work from any directory: MONAI's ``ConfigWorkflow`` knows the config
folder but does not expose it to the config, so this looks it up on the running workflow. An explicit
``--bundle_root`` override still wins, because the config expression is then never evaluated.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import torch

from common.errors import BundleInputError, InputNotFoundError


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


def load_weights(network, path: str, what: str = "model weights", hint: str = ""):
    """Load the weights file ``path`` into ``network`` with ``strict=True`` and return ``network``.

    A ``DistributedDataParallel``/``DataParallel`` wrapper is looked through; the file may be a plain state dict or
    a training checkpoint (``{"model": ...}``), with or without DDP's ``module.`` prefix, read weights-only
    (:func:`common.networks.sam.checkpoint.load_state_dict_file`). Raises :class:`InputNotFoundError` (``what`` and
    ``hint`` in the message) or ``CheckpointError`` (unreadable, NaN/infinite weights, keys or shapes that do not
    fit, with the keys named).
    """
    from common.networks.sam.checkpoint import load_checkpoint

    require_file(path, what, hint)
    load_checkpoint(unwrapped(network), path, strict=True, hint=hint)
    return network


def optimise_for_inference(
    network, precision: str = "float32", encoder_backend: str = "torch", weights_path: str | None = None
):
    """Inference-only speed-ups that keep the weights file: TinyViT's conv/BN pairs folded into single convolutions
    (:func:`common.networks.sam.tiny_vit.fold_batchnorms`; outputs equal to ~1e-5), and the image encoder in
    ``precision`` (``"float32"``, ``"bf16"``, or ``"auto"``: bf16 where the device runs it natively;
    :mod:`common.networks.precision`) on ``encoder_backend`` (``"torch"``, ``"openvino"``, or ``"auto"``: OpenVINO
    where it is installed and the network is on the CPU; :mod:`common.networks.openvino_encoder`, its converted
    models cached in ``openvino/`` beside ``weights_path``). The fold is used in eval mode without gradients;
    ``train()`` and loading weights undo it, and calling this again redoes it (cheap). On the CPU, glibc is told to
    keep freed memory for re-use (:func:`common.host_memory.keep_freed_memory`: no page faults per forward, 1.30x for
    TinyViT; the user's own malloc settings win). Call after :func:`load_weights`; returns ``network``."""
    from common.host_memory import keep_freed_memory
    from common.networks.openvino_encoder import set_encoder_backend
    from common.networks.precision import set_encoder_precision
    from common.networks.sam.tiny_vit import fold_batchnorms

    model = unwrapped(network)
    fold_batchnorms(model)
    if any(p.device.type == "cpu" for p in model.parameters()):
        keep_freed_memory()
    cache_dir = os.path.join(os.path.dirname(os.path.abspath(weights_path)), "openvino") if weights_path else None
    if set_encoder_backend(model, encoder_backend, precision, cache_dir) == "torch":
        set_encoder_precision(model, precision)
    return network


class NonFiniteOutputError(BundleInputError, RuntimeError):
    """A network stage produced NaN or infinite values for this input, so nothing derived from it may be written."""


def guard_finite_outputs(network):
    """Make ``network`` and each of its top-level stages (encoder, prompt encoder, decoder, ...) raise
    :class:`NonFiniteOutputError` when a floating-point tensor they return holds NaN/Inf; returns ``network``.

    Inferers call the stages directly (one encoder call, many decoder calls), so each stage is checked, before any
    mask is thresholded or written. A wrapper (DDP/DataParallel) is looked through; a second call adds nothing.
    Cost: one ``isfinite`` per output.
    """
    model = unwrapped(network)
    if getattr(model, "_finite_outputs_guarded", False):  # once per network (a server asks for it per request)
        return network
    for name, module in [("network", model), *model.named_children()]:
        module.register_forward_hook(_finite_output_hook(name))
    model._finite_outputs_guarded = True
    return network


def _finite_output_hook(stage: str):
    def hook(module, args, output):
        bad = sum(int((~torch.isfinite(t)).sum()) for t in _tensors_in(output) if t.is_floating_point())
        if bad:
            raise NonFiniteOutputError(
                f"the network's {stage} ({type(module).__name__}) returned {bad} NaN/infinite value(s); nothing was "
                "written (check the weights file, or run in float32)"
            )

    return hook


def _tensors_in(output) -> list:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _tensors_in(item)]
    return []


def unwrapped(network):
    """The network inside a DataParallel / DistributedDataParallel wrapper (its keys without ``module.``)."""
    from torch.nn import DataParallel
    from torch.nn.parallel import DistributedDataParallel

    return network.module if isinstance(network, (DataParallel, DistributedDataParallel)) else network
