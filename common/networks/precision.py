"""Inference precision of image encoders: float32, or bfloat16 autocast where the hardware runs bfloat16 natively.

The image encoder is nearly all of a SAM-style network's cost, and its matrix products run about 3x faster in
bfloat16 on CPUs with AVX512-BF16 (or AMX) and on GPUs from compute capability 8.0. :func:`set_encoder_precision`
runs a network's ``image_encoder`` under ``torch.autocast(dtype=torch.bfloat16)`` and hands float32 back to the
prompt encoder and mask decoder, which stay float32; weights and the state dict are untouched. Precision names:

- ``"float32"``: no autocast (what equivalence tests use);
- ``"bf16"``: bfloat16 autocast on the encoder, wherever asked (emulated, and slow, without native support);
- ``"auto"``: ``"bf16"`` where :func:`native_bf16` holds for the network's device, else ``"float32"``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "float32", "bf16")

__all__ = ["PRECISIONS", "native_bf16", "resolve_precision", "set_encoder_precision"]


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CUDA GPU that supports it without emulation, or a CPU with
    AVX512-BF16 or AMX tiles."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``"auto"`` -> ``"bf16"`` or ``"float32"`` for ``device``; the others unchanged. Unknown names raise."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "float32"
    return precision


def _as_float32(value: Any) -> Any:
    """bfloat16 tensors (also inside tuples, lists and dicts) -> float32; everything else unchanged."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype == torch.bfloat16 else value
    if isinstance(value, (tuple, list)):
        return type(value)(_as_float32(v) for v in value)
    if isinstance(value, dict):
        return {k: _as_float32(v) for k, v in value.items()}
    return value


def _bf16_forward(module: nn.Module, forward):
    def forward_in_bf16(*args, **kwargs):
        device_type = next(module.parameters()).device.type
        with torch.autocast(device_type, dtype=torch.bfloat16):
            out = forward(*args, **kwargs)
        for arg in (*args, *kwargs.values()):  # a SAM context dict collects features for the decoder (HQ-SAM)
            if isinstance(arg, dict):
                arg.update(_as_float32(arg))
        return _as_float32(out)

    forward_in_bf16.float32_forward = forward  # type: ignore[attr-defined]
    return forward_in_bf16


def set_encoder_precision(network: nn.Module, precision: str = "float32") -> str:
    """Run ``network.image_encoder`` in ``precision`` (see the module docstring) from now on; returns the precision
    in effect (``"auto"`` resolved for the network's device). Calling again with another precision switches; a
    network without ``image_encoder`` stays as it is (``"float32"``). Unknown names raise ``ValueError``."""
    encoder = getattr(network, "image_encoder", None)
    if not isinstance(encoder, nn.Module):
        resolve_precision(precision, "cpu")  # the name is still checked
        return "float32"
    device = next(encoder.parameters()).device
    resolved = resolve_precision(precision, device)
    if hasattr(encoder.__dict__.get("forward"), "float32_forward"):  # undo an earlier bf16 switch
        del encoder.forward
    if resolved == "bf16":
        encoder.forward = _bf16_forward(encoder, encoder.forward)
    if precision != resolved or resolved == "bf16":
        logger.info(f"image encoder precision: {resolved} (asked: {precision}, device: {device})")
    return resolved
