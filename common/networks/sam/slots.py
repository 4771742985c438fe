"""Adapter slots: named places in a SAM module where a method inserts its own small modules.

A *serial* slot replaces the tensor by the module's output (the module carries its own skip connection); a
*parallel* slot adds ``scale * module(input)`` to a branch. Empty slots cost nothing and add no state-dict keys;
filled slots keep their parameters under ``adapters.{slot}.*`` of the owning module.

A slot module that needs more than the tensor it sits on sets the class attribute ``uses_context = True`` and is
called as ``module(x, context)``. ``context`` is one dict per forward pass, shared by every slot and hook of that
pass (e.g. SAMUS's CNN features for its cross-branch attention, the prompt tokens for a prompt-conditioned decoder
adapter); modules may read and write it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["AdapterSlots", "ContextTap", "call_slot_module"]


def call_slot_module(module: nn.Module, x: torch.Tensor, context: dict[str, Any] | None) -> torch.Tensor:
    """``module(x, context)`` for modules with ``uses_context``, else ``module(x)``."""
    if getattr(module, "uses_context", False):
        if context is None:
            raise ValueError(f"{type(module).__name__} needs the forward context, but none was passed")
        return module(x, context)
    return module(x)


class AdapterSlots(nn.Module):
    """Base for modules with adapter slots; subclasses set :attr:`SLOTS` (slot name -> "serial" | "parallel")."""

    SLOTS: Mapping[str, str] = {}

    def __init__(self) -> None:
        super().__init__()
        self.adapters = nn.ModuleDict()
        self.adapter_scales: dict[str, float] = {}

    def _check_slot(self, slot: str) -> None:
        if slot not in self.SLOTS:
            raise KeyError(f"unknown adapter slot {slot!r}; expected one of {sorted(self.SLOTS)}")

    def set_adapter(self, slot: str, module: nn.Module | None, scale: float = 1.0) -> None:
        """Place ``module`` in ``slot``, or empty the slot with ``None``.

        ``scale`` multiplies the output of a parallel slot; serial slots take no scale (must be 1.0).
        """
        self._check_slot(slot)
        if module is None:
            if slot in self.adapters:
                del self.adapters[slot]
            self.adapter_scales.pop(slot, None)
            return
        if not isinstance(module, nn.Module):
            raise TypeError(f"adapter for slot {slot!r} must be an nn.Module, got {type(module).__name__}")
        if self.SLOTS[slot] == "serial" and scale != 1.0:
            raise ValueError(
                f"slot {slot!r} is serial and takes no scale (got {scale}); build the scale into the module"
            )
        self.adapters[slot] = module
        self.adapter_scales[slot] = float(scale)

    def get_adapter(self, slot: str) -> nn.Module | None:
        """The module in ``slot``, or ``None``."""
        self._check_slot(slot)
        return self.adapters[slot] if slot in self.adapters else None

    def _serial(self, slot: str, x: torch.Tensor, context: dict[str, Any] | None = None) -> torch.Tensor:
        return call_slot_module(self.adapters[slot], x, context) if slot in self.adapters else x

    def _parallel(
        self, slot: str, x_in: torch.Tensor, branch: torch.Tensor, context: dict[str, Any] | None = None
    ) -> torch.Tensor:
        if slot not in self.adapters:
            return branch
        return branch + self.adapter_scales[slot] * call_slot_module(self.adapters[slot], x_in, context)


class ContextTap(nn.Module):
    """Serial slot module that stores the tensor passing through in ``context[key]`` and returns it unchanged.

    E.g. HQ-SAM's early-feature tap: ``encoder.blocks[2].set_adapter("after_block", ContextTap("early"))``, then
    ``encoder(images, context=ctx)`` leaves the block-2 output ``(B, H, W, C)`` in ``ctx["early"]``. No parameters.
    """

    uses_context = True

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key

    def forward(self, x: torch.Tensor, context: dict[str, Any]) -> torch.Tensor:
        context[self.key] = x
        return x
