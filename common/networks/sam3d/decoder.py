"""3DSAM-adapter mask decoder: multi-layer aggregation of the tapped features plus the image (spec A4).

Key layout (the published ``decoder_dict``): ``mlahead.head{2,3,4,5}.{0,3}.weight``, ``cls.0.weight``,
``cls.3.weight``. InstanceNorm has no parameters and behaves the same in training and evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MLAHead", "MultiLevelDecoder"]


def _conv_block(in_ch: int, out_ch: int) -> list[nn.Module]:
    return [nn.Conv3d(in_ch, out_ch, 3, padding=1, bias=False), nn.InstanceNorm3d(out_ch), nn.ReLU(inplace=True)]


class MLAHead(nn.Module):
    """Four heads (``head2..head5``), each two conv-IN-ReLU blocks, then trilinear upsampling by ``scale``
    (``align_corners=True``, as published): 4 x ``(B, in_ch, G, G, G)`` -> ``(B, 4 * mid_ch, sG, sG, sG)``."""

    def __init__(self, in_ch: int = 256, mid_ch: int = 128, scale: int = 2) -> None:
        super().__init__()
        self.scale = scale
        for i in range(2, 6):
            setattr(self, f"head{i}", nn.Sequential(*_conv_block(in_ch, mid_ch), *_conv_block(mid_ch, mid_ch)))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        heads = [self.head2, self.head3, self.head4, self.head5]
        if len(features) != len(heads):
            raise ValueError(f"MLAHead takes {len(heads)} feature maps, got {len(features)}")
        outs = [F.interpolate(h(f), scale_factor=self.scale, mode="trilinear", align_corners=True)
                for h, f in zip(heads, features)]
        return torch.cat(outs, dim=1)


class MultiLevelDecoder(nn.Module):
    """``forward(features: 4 x (B, in_ch, G, G, G), image (B, 1, R, R, R)) -> logits (B, num_classes, R, R, R)``.

    The image is resized to ``2G`` (trilinear, ``align_corners=False``; for ``R = 4G`` this is an exact 2x2x2
    average) and concatenated to the aggregated heads; ``cls`` maps the ``4 * mid_ch + 1`` channels to the
    classes at ``2G``, and the logits are upsampled to ``R`` (trilinear, ``align_corners=True``). All maps share
    one axis order; the caller chooses it (published: (H, W, D)).
    """

    def __init__(self, in_ch: int = 256, mid_ch: int = 128, num_classes: int = 2, head_scale: int = 2) -> None:
        super().__init__()
        self.mlahead = MLAHead(in_ch, mid_ch, head_scale)
        self.cls = nn.Sequential(*_conv_block(4 * mid_ch + 1, mid_ch),
                                 nn.Conv3d(mid_ch, num_classes, 3, padding=1, bias=False))

    def forward(self, features: Sequence[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        x = self.mlahead(features)
        size = x.shape[2:]
        small = F.interpolate(image, scale_factor=size[0] / image.shape[2], mode="trilinear", align_corners=False)
        logits = self.cls(torch.cat([x, small], dim=1))
        return F.interpolate(logits, size=image.shape[2:], mode="trilinear", align_corners=True)
