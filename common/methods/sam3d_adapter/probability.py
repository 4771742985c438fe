"""Sliding-window inference that blends foreground probabilities instead of logits.

MONAI's ``SlidingWindowInferer`` blends whatever the network returns and (in 1.6) does not expose
``sliding_window_inference``'s ``process_fn``; the 3DSAM-adapter's automatic evaluation blends the softmax
foreground probability of each window, which differs from a softmax of blended logits.
"""

from __future__ import annotations

import torch
from monai.inferers import SlidingWindowInferer

__all__ = ["ForegroundProbabilitySlidingWindowInferer"]


class ForegroundProbabilitySlidingWindowInferer(SlidingWindowInferer):
    """``SlidingWindowInferer`` over ``softmax(network(window), 1)[:, 1:]``: ``(B, C, *S) -> (B, 1, *S)``
    foreground probability (channel 1 of a two-class network). Arguments as ``SlidingWindowInferer``."""

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs):
        def foreground(window: torch.Tensor, *a, **k) -> torch.Tensor:
            return torch.softmax(network(window, *a, **k), dim=1)[:, 1:]

        return super().__call__(inputs, foreground, *args, **kwargs)
