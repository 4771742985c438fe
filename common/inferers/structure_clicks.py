"""Sliding windows of whole slices, once per prompted structure: the Medical SAM Adapter's volume evaluation.

MSA segments one structure per forward pass, prompted by a click map (:mod:`common.transforms.slice_clicks`). A
volume with ``S`` structures to segment has ``S`` click maps; each runs through MONAI's sliding window over full
axial slices (windows of ``num_slices`` along Z, the depth the network was trained with), which cuts the click map
with the image and hands it to the network as ``condition``.
"""

from __future__ import annotations

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer, SlidingWindowInferer
from monai.utils import convert_to_dst_type

__all__ = ["PerStructureSlidingWindowInferer"]


def _plain(x) -> torch.Tensor:
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


class PerStructureSlidingWindowInferer(Inferer):
    """Per-structure foreground probabilities ``(B, S, X, Y, Z)`` of a click-conditioned network.

    Call: ``inferer(inputs, network, clicks)`` with ``inputs`` ``(B, 1, X, Y, Z)`` and ``clicks`` ``(B, S, X, Y, Z)``
    (channel ``s``: the click map of structure ``s``). For each ``s``, ``SlidingWindowInferer`` with windows ``(X, Y,
    num_slices)`` calls ``network(window, condition=c)``, ``c`` being the same window of ``clicks[:, s:s + 1]``, for
    logits ``(B', 1, X, Y, num_slices)``; the stitched logits go through a sigmoid and become output channel ``s``.
    Volumes with fewer than ``num_slices`` slices are zero-padded along Z (image and clicks, half before, half after)
    and the padding is cropped off. The result is a MetaTensor with the meta and transform trace of ``inputs`` (for
    ``Invertd``). The network runs under the caller's grad mode.

    Args:
        num_slices: window depth along Z in slices (MSA's ``chunk``; a depth branch requires its own ``num_slices``).
        overlap: window overlap along Z, in [0, 1).
        mode: blending of overlapping windows, ``"constant"`` or ``"gaussian"``.
        sw_batch_size: windows per network call.

    Raises:
        ValueError: ``inputs`` not ``(B, 1, X, Y, Z)``, ``clicks`` not ``(B, S, X, Y, Z)`` with the same ``B`` and
            spatial shape, or network output with other than one channel.
    """

    def __init__(self, num_slices: int, overlap: float = 0.25, mode: str = "constant", sw_batch_size: int = 1) -> None:
        super().__init__()
        if int(num_slices) < 1:
            raise ValueError(f"num_slices must be >= 1, got {num_slices}")
        self.num_slices = int(num_slices)
        self.window = SlidingWindowInferer(roi_size=(-1, -1, self.num_slices), sw_batch_size=sw_batch_size,
                                           overlap=overlap, mode=mode)

    def __call__(self, inputs: torch.Tensor, network, clicks: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        images = _plain(inputs)
        maps = _plain(clicks).to(device=images.device, dtype=images.dtype)
        if images.ndim != 5 or images.shape[1] != 1:
            raise ValueError(f"PerStructureSlidingWindowInferer: inputs must be (B, 1, X, Y, Z), got shape "
                             f"{tuple(images.shape)}")
        b, _, x, y, z = images.shape
        if maps.ndim != 5 or maps.shape[0] != b or maps.shape[2:] != images.shape[2:] or maps.shape[1] < 1:
            raise ValueError(f"PerStructureSlidingWindowInferer: clicks must be (B, S, X, Y, Z) = ({b}, S >= 1, {x}, "
                             f"{y}, {z}) like inputs {tuple(images.shape)}, got {tuple(maps.shape)}")
        probs = []
        for s in range(maps.shape[1]):
            logits = self.window(images, network, *args, condition=maps[:, s:s + 1], **kwargs)
            if logits.shape[1] != 1:
                raise ValueError(f"PerStructureSlidingWindowInferer: the network must return one logit channel "
                                 f"(B, 1, X, Y, Z), got {logits.shape[1]} channels for structure channel {s}")
            probs.append(torch.sigmoid(_plain(logits)))
        out = torch.cat(probs, dim=1)
        return convert_to_dst_type(out, inputs, dtype=out.dtype)[0]
