"""TinyViT image encoder of LiteMedSAM ("MedSAM on Laptop", CVPR24 baseline).

A hierarchical encoder: a 1x1-conv stem at full resolution, one convolutional stage (MBConv blocks),
then windowed-attention stages, joined by conv "patch merging" layers, and SAM's neck on top. At the
published size (``TinyViT()``) it maps ``(B, 3, 256, 256)`` to ``(B, 256, 64, 64)``, has 5,726,740
parameters, and its ``state_dict`` keys are exactly the ``image_encoder.*`` keys of ``lite_medsam.pth``
(BatchNorm running statistics included), so the published weights load with ``strict=True``::

    state = torch.load("lite_medsam.pth", map_location="cpu", weights_only=True)
    prefix = "image_encoder."
    encoder.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})

Differences from the published module (behaviour at the published size is unchanged):

* the output grid is derived from ``img_size`` and the merge strides (the published code hard-codes a
  64x64 reshape), and every size is an argument, including the neck width ``out_chans``;
* the stride of each patch-merging layer is an explicit argument ``merge_strides`` (default: 2 for
  every merge but the last, which has stride 1). The published code instead uses stride 1 exactly when
  the merge's output width is 320, 448 or 576, which gives the same strides at the published size;
* attention runs through ``torch.nn.functional.scaled_dot_product_attention``, with the learned
  relative-position biases gathered into an additive 4-D ``attn_mask`` on every call (a gather of at most
  ``heads x window^4`` values, negligible next to the attention itself; nothing is cached, so there is
  no stale state after ``load_state_dict`` or an optimiser step);
* for inference, :func:`fold_batchnorms` folds each conv/BN pair into one convolution (1.16-1.19x on the
  published encoder); the state dict keeps the published layout, and training or loading undoes the fold;
* the attention stages keep tokens as ``(B, H, W, C)`` maps instead of ``(B, H*W, C)`` sequences, and the
  feature maps are kept in channels-last memory (the output is returned as a contiguous NCHW tensor).

Why not MONAI building blocks: the checkpoint's key layout (``c``/``bn`` conv pairs, ``mlp.norm``,
``mlp.fc1``, per-head interleaved ``qkv``) and the LayerNorm-inside-attention/MLP arrangement do not
match ``monai.networks.blocks.MLPBlock`` / ``SABlock``; MONAI's ``DropPath`` is used for stochastic depth.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from monai.networks.layers import DropPath
from torch import nn

from .common import LayerNorm2d

__all__ = [
    "ConvBN",
    "fold_batchnorms",
    "PatchEmbed",
    "MBConv",
    "PatchMerging",
    "ConvStage",
    "WindowAttention",
    "TinyViTMlp",
    "TinyViTBlock",
    "AttentionStage",
    "TinyViT",
]


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    pair = [int(v) for v in value]
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair[0], pair[1]


def _drop_path(rate: float) -> nn.Module:
    return DropPath(rate) if rate > 0.0 else nn.Identity()


class ConvBN(nn.Sequential):
    """Bias-free ``Conv2d`` (``c``) followed by ``BatchNorm2d`` (``bn``); ``(B, Cin, H, W) -> (B, Cout, H', W')``.

    Padding is ``kernel_size // 2``; ``bn_weight_init`` sets the initial BN scale (0 makes a residual
    branch start as identity). :meth:`fold` precomputes the pair as one convolution for inference.
    """

    c: nn.Conv2d
    bn: nn.BatchNorm2d
    folded_weight: torch.Tensor | None
    folded_bias: torch.Tensor | None

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.add_module(
            "c", nn.Conv2d(in_chans, out_chans, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)
        )
        bn = nn.BatchNorm2d(out_chans)
        nn.init.constant_(bn.weight, bn_weight_init)
        nn.init.zeros_(bn.bias)
        self.add_module("bn", bn)
        # not in the state dict: checkpoints keep the c/bn layout and load strictly; moved by .to() like any buffer
        self.register_buffer("folded_weight", None, persistent=False)
        self.register_buffer("folded_bias", None, persistent=False)
        self.register_load_state_dict_post_hook(lambda module, _: module.unfold())

    @torch.no_grad()
    def fold(self) -> None:
        """Precompute ``bn(c(x))`` with BN's running statistics as one biased convolution, used in eval mode without
        gradients (inference); equal to the pair up to float rounding. Undone by :meth:`unfold`, ``train()`` and
        ``load_state_dict``."""
        bn = self.bn
        mean, var = cast(torch.Tensor, bn.running_mean), cast(torch.Tensor, bn.running_var)
        scale = bn.weight / torch.sqrt(var + bn.eps)
        self.folded_weight = self.c.weight * scale.view(-1, 1, 1, 1)
        self.folded_bias = bn.bias - mean * scale

    def unfold(self) -> None:
        self.folded_weight = self.folded_bias = None

    def train(self, mode: bool = True) -> "ConvBN":
        if mode:
            self.unfold()
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.folded_weight is None or self.training or torch.is_grad_enabled():
            return super().forward(x)
        c = self.c
        return F.conv2d(x, self.folded_weight, self.folded_bias, c.stride, c.padding, c.dilation, c.groups)


def fold_batchnorms(module: nn.Module) -> nn.Module:
    """:meth:`ConvBN.fold` every conv/BN pair of ``module`` (a TinyViT, or a network holding one); returns it.

    For inference only: the folded convolution runs when the module is in eval mode and gradients are off. A
    module without pairs is returned unchanged.
    """
    for child in module.modules():
        if isinstance(child, ConvBN):
            child.fold()
    return module


class PatchEmbed(nn.Module):
    """Stem at full resolution: 1x1 ConvBN to ``embed_dim // 2``, GELU, 1x1 ConvBN to ``embed_dim``.

    ``(B, in_chans, H, W) -> (B, embed_dim, H, W)`` (no downsampling, unlike MobileSAM's strided 3x3 stem).
    """

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(ConvBN(in_chans, embed_dim // 2, 1), nn.GELU(), ConvBN(embed_dim // 2, embed_dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted-residual block: 1x1 expand, GELU, depthwise 3x3, GELU, 1x1 project, + input, GELU.

    ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, dim: int, expand_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden, 1)
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = ConvBN(hidden, dim, 1, bn_weight_init=0.0)
        self.act = nn.GELU()
        self.drop_path = _drop_path(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv1(x))
        y = self.act(self.conv2(y))
        y = self.conv3(y)
        return self.act(x + self.drop_path(y))


class PatchMerging(nn.Module):
    """1x1 conv, GELU, depthwise 3x3 conv with ``stride``, GELU, 1x1 conv.

    ``(B, dim, H, W) -> (B, out_dim, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(self, dim: int, out_dim: int, stride: int = 2) -> None:
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim, 1)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride=stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim, 1)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.conv3(x)


class ConvStage(nn.Module):
    """Stage 0: ``depth`` MBConv blocks, then an optional :class:`PatchMerging`; ``(B, C, H, W)`` in and out."""

    def __init__(
        self,
        dim: int,
        depth: int,
        expand_ratio: float = 4.0,
        drop_path: Sequence[float] = (),
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        rates = list(drop_path) or [0.0] * depth
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio, rates[i]) for i in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside one ``window x window`` window, LayerNorm first.

    ``(B_windows, window**2, dim) -> (B_windows, window**2, dim)``. Each head adds a learned bias indexed by
    the absolute row/column offset between query and key (``attention_biases``: ``(heads, window**2)``,
    column ``|dy| * window + |dx|``). ``qkv`` is laid out per head as ``[q_h, k_h, v_h]``.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_size = window_size
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window_size * window_size))
        rows, cols = torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
        rows, cols = rows.flatten(), cols.flatten()
        index = (rows[:, None] - rows[None, :]).abs() * window_size + (cols[:, None] - cols[None, :]).abs()
        self.register_buffer("attention_bias_index", index, persistent=False)

    attention_bias_index: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3, self.head_dim).permute(3, 0, 2, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B_windows, heads, N, head_dim)
        bias = self.attention_biases[:, self.attention_bias_index].to(q.dtype)  # (heads, N, N)
        # a 4-D mask: with a 3-D one SDPA falls back to its unfused math kernel on CPU
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0))
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class TinyViTMlp(nn.Module):
    """LayerNorm, Linear ``dim -> hidden``, GELU, Linear ``hidden -> dim``; ``(..., dim) -> (..., dim)``."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention (+ residual), depthwise ``local_conv`` (no residual), MLP (+ residual).

    ``(B, H, W, C) -> (B, H, W, C)``. Maps whose sides are not multiples of ``window_size`` are zero-padded
    at the bottom/right before the attention's LayerNorm (as published: padded tokens take part as keys),
    and cropped afterwards.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        local_conv_size: int = 3,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if window_size <= 0:
            raise ValueError(f"window_size must be positive, got {window_size}")
        self.window_size = window_size
        self.attn = WindowAttention(dim, num_heads, window_size)
        self.local_conv = ConvBN(dim, dim, local_conv_size, groups=dim)
        self.mlp = TinyViTMlp(dim, int(dim * mlp_ratio))
        self.drop_path = _drop_path(drop_path)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        ws = self.window_size
        pad_b, pad_r = (-h) % ws, (-w) % ws
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        nh, nw = (h + pad_b) // ws, (w + pad_r) // ws
        windows = x.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        windows = self.attn(windows)
        x = windows.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, nh * ws, nw * ws, c)
        return x[:, :h, :w] if (pad_b or pad_r) else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self._attend(x))
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.drop_path(self.mlp(x))


class AttentionStage(nn.Module):
    """``depth`` :class:`TinyViTBlock` s, then an optional :class:`PatchMerging`; ``(B, C, H, W)`` in and out."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 4.0,
        local_conv_size: int = 3,
        drop_path: Sequence[float] = (),
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        rates = list(drop_path) or [0.0] * depth
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads, window_size, mlp_ratio, local_conv_size, rates[i]) for i in range(depth)
        )
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # channels-last tokens for the blocks
        for block in self.blocks:
            x = block(x)
        x = x.permute(0, 3, 1, 2)
        return x if self.downsample is None else self.downsample(x)


class TinyViT(nn.Module):
    """LiteMedSAM's TinyViT image encoder: ``(B, in_chans, H, W) -> (B, out_chans, H', W')``.

    With the defaults, ``(B, 3, 256, 256) -> (B, 256, 64, 64)``; in general ``(H', W') = embedding_size``,
    i.e. ``img_size`` divided (rounding up) by each of ``merge_strides`` in turn.

    Args:
        img_size: input side (int) or ``(H, W)``; the input must have exactly this size.
        in_chans: input channels.
        embed_dims: width of each stage; stage 0 is convolutional, the others use windowed attention.
        depths: blocks per stage.
        num_heads: attention heads per stage (``num_heads[0]`` is unused: stage 0 has no attention).
        window_sizes: attention window side per stage (``window_sizes[0]`` is unused).
        mlp_ratio: MLP hidden width / stage width in the attention blocks.
        mbconv_expand_ratio: hidden width / stage width in the MBConv blocks.
        local_conv_size: kernel of the depthwise conv between attention and MLP.
        out_chans: neck (embedding) channels.
        drop_path_rate: stochastic-depth rate, rising linearly from 0 over all blocks (0 at inference).
        merge_strides: stride of the patch merging after stages ``0 .. n-2``; default ``(2, ..., 2, 1)``.
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 256,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        out_chans: int = 256,
        drop_path_rate: float = 0.0,
        merge_strides: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        num_stages = len(depths)
        if num_stages < 2:
            raise ValueError(f"TinyViT needs at least 2 stages (1 conv + attention), got depths={list(depths)}")
        for name, values in (("embed_dims", embed_dims), ("num_heads", num_heads), ("window_sizes", window_sizes)):
            if len(values) != num_stages:
                raise ValueError(f"{name} has {len(values)} entries, expected {num_stages} (one per entry of depths)")
        if merge_strides is None:
            merge_strides = (2,) * (num_stages - 2) + (1,)
        if len(merge_strides) != num_stages - 1:
            raise ValueError(f"merge_strides has {len(merge_strides)} entries, expected {num_stages - 1}")

        self.img_size = _pair(img_size, "img_size")
        self.in_chans = in_chans
        self.out_chans = out_chans
        h, w = self.img_size
        for s in merge_strides:
            h, w = (h - 1) // s + 1, (w - 1) // s + 1
        self.embedding_size: tuple[int, int] = (h, w)

        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])

        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        for i in range(num_stages):
            stage_rates = rates[sum(depths[:i]) : sum(depths[: i + 1])]
            merge = PatchMerging(embed_dims[i], embed_dims[i + 1], merge_strides[i]) if i < num_stages - 1 else None
            if i == 0:
                stage: nn.Module = ConvStage(embed_dims[0], depths[0], mbconv_expand_ratio, stage_rates, merge)
            else:
                stage = AttentionStage(
                    embed_dims[i],
                    depths[i],
                    num_heads[i],
                    window_sizes[i],
                    mlp_ratio,
                    local_conv_size,
                    stage_rates,
                    merge,
                )
            self.layers.append(stage)

        self.apply(self._init_linear)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    @staticmethod
    def _init_linear(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, *img_size) -> (B, out_chans, *embedding_size)``."""
        if x.ndim != 4 or x.shape[1] != self.in_chans or tuple(x.shape[2:]) != self.img_size:
            raise ValueError(
                f"TinyViT expects input of shape (B, {self.in_chans}, {self.img_size[0]}, {self.img_size[1]}), "
                f"got {tuple(x.shape)}"
            )
        # Channels-last memory makes the convolutions ~25% faster on CPU, and the attention stages' (B, H, W, C)
        # views of it are then contiguous; values are unchanged.
        x = self.patch_embed(x.contiguous(memory_format=torch.channels_last))
        for stage in self.layers:
            x = stage(x)
        return self.neck(x).contiguous()
