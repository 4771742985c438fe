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
    """Four heads (``head2..head5``), each two conv-IN-ReLU blocks: ``(B, in_ch, G, G, G) -> (B, mid_ch, G, G, G)``,
    one per tapped feature level (applied by :class:`MultiLevelDecoder`)."""

    # registered with setattr in __init__
    head2: nn.Sequential
    head3: nn.Sequential
    head4: nn.Sequential
    head5: nn.Sequential

    def __init__(self, in_ch: int = 256, mid_ch: int = 128) -> None:
        super().__init__()
        self.mid_ch = mid_ch
        for i in range(2, 6):
            setattr(self, f"head{i}", nn.Sequential(*_conv_block(in_ch, mid_ch), *_conv_block(mid_ch, mid_ch)))

    @property
    def heads(self) -> list[nn.Module]:
        return [self.head2, self.head3, self.head4, self.head5]


class MultiLevelDecoder(nn.Module):
    """``forward(features: 4 x (B, in_ch, G, G, G), image (B, 1, R, R, R)) -> logits (B, num_classes, R, R, R)``.

    Each head's output is upsampled by ``head_scale`` (trilinear, ``align_corners=True``, as published); the image
    is resized to the same grid (trilinear, ``align_corners=False``; from twice that grid's size this is an exact
    2x2x2 average) and concatenated as the last channel; ``cls`` maps the ``4 * mid_ch + 1`` channels to the
    classes, and the logits are upsampled to ``R`` (trilinear, ``align_corners=True``). The concatenation is
    written in place into one tensor (no per-head copies). All maps share one axis order; the caller chooses it
    (published: (H, W, D)).
    """

    def __init__(self, in_ch: int = 256, mid_ch: int = 128, num_classes: int = 2, head_scale: int = 2) -> None:
        super().__init__()
        self.head_scale = head_scale
        self.mlahead = MLAHead(in_ch, mid_ch)
        self.cls = nn.Sequential(
            *_conv_block(4 * mid_ch + 1, mid_ch), nn.Conv3d(mid_ch, num_classes, 3, padding=1, bias=False)
        )

    def forward(self, features: Sequence[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        heads, mid = self.mlahead.heads, self.mlahead.mid_ch
        if len(features) != len(heads):
            raise ValueError(f"the decoder takes {len(heads)} feature maps, got {len(features)}")
        size = [n * self.head_scale for n in features[0].shape[2:]]
        x = features[0].new_empty(features[0].shape[0], len(heads) * mid + 1, *size)
        for i, (head, f) in enumerate(zip(heads, features)):
            x[:, i * mid : (i + 1) * mid] = F.interpolate(head(f), size=size, mode="trilinear", align_corners=True)
        x[:, -1:] = F.interpolate(image, size=size, mode="trilinear", align_corners=False)
        return F.interpolate(self.cls(x), size=image.shape[2:], mode="trilinear", align_corners=True)
