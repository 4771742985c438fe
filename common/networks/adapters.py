"""Adapter modules placed into the SAM core's block slots (see ``common.networks.sam.image_encoder.Block``).

Each adapter is small and token-wise unless its docstring says otherwise.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Adapter", "Conv3dAdapter", "PromptConditionedAdapter"]


class Adapter(nn.Module):
    """Bottleneck adapter: ``fc2(act(fc1(x)))``, plus ``x`` when ``skip``.

    ``(..., dim) -> (..., dim)`` with hidden width ``int(dim * ratio)`` (ViT-B, ratio 0.25: 768 -> 192 -> 768,
    295,872 parameters). ``zero_init=True`` zeroes ``fc2`` so the adapter starts as the identity (``skip=True``,
    serial slots) or as zero (``skip=False``, parallel slots); otherwise PyTorch's default Linear init is used
    (as in Medical SAM Adapter and SAMUS).
    """

    def __init__(
        self, dim: int, ratio: float = 0.25, act: type[nn.Module] = nn.GELU, skip: bool = True, zero_init: bool = False
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


class PromptConditionedAdapter(Adapter):
    """:class:`Adapter` (with skip) whose bottleneck also receives the prompt: ``x + fc2(act(fc1(x) +
    prompt_fc(p)))``, ``p`` the decoder block's prompt tokens ``(B, N, dim)`` from ``context["prompt_tokens"]``
    (token-wise, same shape as ``x``). Medical SAM Adapter's decoder adapter after the token-to-image
    cross-attention (spec 3dsam_msa.md B1b). ``zero_init`` as :class:`Adapter`; ViT-B decoder (256, ratio 0.25):
    49,536 parameters."""

    uses_context = True

    def __init__(self, dim: int, ratio: float = 0.25, act: type[nn.Module] = nn.GELU, zero_init: bool = False) -> None:
        super().__init__(dim, ratio, act, skip=True, zero_init=zero_init)
        self.prompt_fc = nn.Linear(dim, self.fc1.out_features)

    def forward(self, x: torch.Tensor, context: dict) -> torch.Tensor:  # type: ignore[override]
        prompt = context["prompt_tokens"]
        if prompt.shape != x.shape:
            raise ValueError(f"prompt tokens {tuple(prompt.shape)} must match the adapted tokens {tuple(x.shape)}")
        return x + self.fc2(self.act(self.fc1(x) + self.prompt_fc(prompt)))


class Conv3dAdapter(nn.Module):
    """3DSAM-adapter's block adapter: ``x + relu(linear2(relu(conv(relu(linear1(x))))))``.

    ``(B, H, W, D, dim) -> (B, H, W, D, dim)`` on a channels-last 3-D token grid; ``conv`` is a depthwise
    ``kernel_size``-cubed Conv3d (padding keeps the grid) that mixes neighbouring tokens in the bottleneck.
    Default init everywhere (no zero init: the adapter is not the identity at step 0, and the final ReLU means it
    only adds non-negative values, as published). ViT-B with ``mid_dim=384``: 601,728 parameters.
    """

    def __init__(self, dim: int, mid_dim: int | None = None, kernel_size: int = 3) -> None:
        super().__init__()
        mid_dim = dim // 2 if mid_dim is None else mid_dim
        self.linear1 = nn.Linear(dim, mid_dim)
        self.conv = nn.Conv3d(mid_dim, mid_dim, kernel_size, padding=kernel_size // 2, groups=mid_dim)
        self.linear2 = nn.Linear(mid_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.linear1(x)).permute(0, 4, 1, 2, 3)
        h = torch.relu(self.conv(h)).permute(0, 2, 3, 4, 1)
        return x + torch.relu(self.linear2(h))
