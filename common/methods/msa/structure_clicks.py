"""Sliding windows of whole slices for the Medical SAM Adapter's volume evaluation and inference.

MSA is prompted by click maps (:mod:`common.methods.msa.slice_clicks`), one per structure. Image and click maps run
together through MONAI's sliding window over full axial slices (windows of ``num_slices`` along Z, the depth the
network was trained with), so each window's slices are encoded once for all structures.
"""

from __future__ import annotations

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer, SlidingWindowInferer
from monai.utils import convert_to_dst_type

from common.progress import on_terminal

__all__ = ["PerStructureSlidingWindowInferer"]


def _plain(x) -> torch.Tensor:
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


class PerStructureSlidingWindowInferer(Inferer):
    """Per-structure foreground probabilities ``(B, S, X, Y, Z)`` of a click-conditioned network.

    Call: ``inferer(inputs, network, clicks)`` with ``inputs`` ``(B, 1, X, Y, Z)`` and ``clicks`` ``(B, S, X, Y, Z)``
    (channel ``s``: the click map of structure ``s``). ``SlidingWindowInferer`` with windows ``(X, Y, num_slices)``
    cuts image and click maps together (MONAI's ``condition`` must have the image's shape, so they travel as one
    tensor) and calls ``network(window, condition=c)`` with that window's click maps ``c`` for logits
    ``(B', S, X, Y, num_slices)``; the stitched logits go through a sigmoid. Volumes with fewer than ``num_slices``
    slices are zero-padded along Z (image and clicks, half before, half after) and the padding is cropped off. The
    result is a MetaTensor with the meta and transform trace of ``inputs`` (for ``Invertd``). The network runs under
    the caller's grad mode.

    Args:
        num_slices: window depth along Z in slices (MSA's ``chunk``; a depth branch requires its own ``num_slices``).
        overlap: window overlap along Z, in [0, 1).
        mode: blending of overlapping windows, ``"constant"`` or ``"gaussian"``.
        sw_batch_size: windows per network call.

    Raises:
        ValueError: ``inputs`` not ``(B, 1, X, Y, Z)``, ``clicks`` not ``(B, S, X, Y, Z)`` with the same ``B`` and
            spatial shape, or network output with other than ``S`` channels.
    """

    def __init__(self, num_slices: int, overlap: float = 0.25, mode: str = "constant", sw_batch_size: int = 1) -> None:
        super().__init__()
        if int(num_slices) < 1:
            raise ValueError(f"num_slices must be >= 1, got {num_slices}")
        self.num_slices = int(num_slices)
        self.window = SlidingWindowInferer(
            roi_size=(-1, -1, self.num_slices),
            sw_batch_size=sw_batch_size,
            overlap=overlap,
            mode=mode,
            progress=on_terminal(),
        )

    def __call__(self, inputs: torch.Tensor, network, clicks: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        images = _plain(inputs)
        maps = _plain(clicks).to(device=images.device, dtype=images.dtype)
        if images.ndim != 5 or images.shape[1] != 1:
            raise ValueError(
                f"PerStructureSlidingWindowInferer: inputs must be (B, 1, X, Y, Z), got shape {tuple(images.shape)}"
            )
        b, _, x, y, z = images.shape
        if maps.ndim != 5 or maps.shape[0] != b or maps.shape[2:] != images.shape[2:] or maps.shape[1] < 1:
            raise ValueError(
                f"PerStructureSlidingWindowInferer: clicks must be (B, S, X, Y, Z) = ({b}, S >= 1, {x}, "
                f"{y}, {z}) like inputs {tuple(images.shape)}, got {tuple(maps.shape)}"
            )
        n_structures = maps.shape[1]

        def windowed(joint: torch.Tensor) -> torch.Tensor:
            logits = network(joint[:, :1], *args, condition=joint[:, 1:], **kwargs)
            if logits.shape[1] != n_structures:
                raise ValueError(
                    f"PerStructureSlidingWindowInferer: the network must return one logit channel per "
                    f"click map ({n_structures}), got {logits.shape[1]} channels"
                )
            return logits

        logits = self.window(torch.cat([images, maps], dim=1), windowed)
        out = torch.sigmoid(_plain(logits))
        return convert_to_dst_type(out, inputs, dtype=out.dtype)[0]
