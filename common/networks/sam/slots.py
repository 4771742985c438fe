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

from collections.abc import Collection, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["AdapterSlots", "ContextTap", "call_slot_module", "check_place", "place_module"]


def call_slot_module(module: nn.Module, x: torch.Tensor, context: dict[str, Any] | None) -> torch.Tensor:
    """``module(x, context)`` for modules with ``uses_context``, else ``module(x)``."""
    if getattr(module, "uses_context", False):
        if context is None:
            raise ValueError(f"{type(module).__name__} needs the forward context, but none was passed")
        return module(x, context)
    return module(x)


def check_place(names: Collection[str], what: str, name: str) -> None:
    """KeyError unless ``name`` is one of ``names`` (``what``: e.g. "adapter slot", "encoder hook")."""
    if name not in names:
        raise KeyError(f"unknown {what} {name!r}; expected one of {sorted(names)}")


def place_module(
    modules: nn.ModuleDict, names: Collection[str], what: str, name: str, module: nn.Module | None
) -> None:
    """``modules[name] = module`` for one of the allowed ``names``, or remove the entry with ``None``."""
    check_place(names, what, name)
    if module is None:
        if name in modules:
            del modules[name]
        return
    if not isinstance(module, nn.Module):
        raise TypeError(f"{what} {name!r} takes an nn.Module, got {type(module).__name__}")
    modules[name] = module


class AdapterSlots(nn.Module):
    """Base for modules with adapter slots; subclasses set :attr:`SLOTS` (slot name -> "serial" | "parallel")."""

    SLOTS: Mapping[str, str] = {}

    def __init__(self) -> None:
        super().__init__()
        self.adapters = nn.ModuleDict()
        self.adapter_scales: dict[str, float] = {}

    def set_adapter(self, slot: str, module: nn.Module | None, scale: float = 1.0) -> None:
        """Place ``module`` in ``slot``, or empty the slot with ``None``.

        ``scale`` multiplies the output of a parallel slot; serial slots take no scale (must be 1.0).
        """
        check_place(self.SLOTS, "adapter slot", slot)
        if module is not None and self.SLOTS[slot] == "serial" and scale != 1.0:
            raise ValueError(
                f"slot {slot!r} is serial and takes no scale (got {scale}); build the scale into the module"
            )
        place_module(self.adapters, self.SLOTS, "adapter slot", slot, module)
        if module is None:
            self.adapter_scales.pop(slot, None)
        else:
            self.adapter_scales[slot] = float(scale)

    def get_adapter(self, slot: str) -> nn.Module | None:
        """The module in ``slot``, or ``None``."""
        check_place(self.SLOTS, "adapter slot", slot)
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
