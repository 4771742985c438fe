"""Adapter modules placed into the SAM core's block slots (see ``common.networks.sam.image_encoder.Block``).

Each adapter is small and token-wise unless its docstring says otherwise.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Adapter"]


class Adapter(nn.Module):
    """Bottleneck adapter: ``fc2(act(fc1(x)))``, plus ``x`` when ``skip``.

    ``(..., dim) -> (..., dim)`` with hidden width ``int(dim * ratio)`` (ViT-B, ratio 0.25: 768 -> 192 -> 768,
    295,872 parameters). ``zero_init=True`` zeroes ``fc2`` so the adapter starts as the identity (``skip=True``,
    serial slots) or as zero (``skip=False``, parallel slots); otherwise PyTorch's default Linear init is used
    (as in Medical SAM Adapter and SAMUS).
    """

    def __init__(
        self,
        dim: int,
        ratio: float = 0.25,
        act: type[nn.Module] = nn.GELU,
        skip: bool = True,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        if hidden < 1:
            raise ValueError(f"adapter hidden width int({dim} * {ratio}) must be >= 1")
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act()
        self.fc2 = nn.Linear(hidden, dim)
        self.skip = skip
        if zero_init:
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc2(self.act(self.fc1(x)))
        return x + y if self.skip else y
