"""3DSAM-adapter image encoder: SAM ViT-B lifted to 3-D token grids (spec: 3dsam_msa.md A1, A2).

Internal layout follows the published model so its checkpoints load unchanged: the input is ``(B, C, D, H, W)``,
tokens are channels-last ``(B, H', W', D', dim)``, features ``(B, out_chans, H', W', D')``.
:class:`~common.networks.sam3d_adapter.Sam3DAdapter` converts from MONAI's ``(B, C, X, Y, Z)``.

Key layout (the published ``encoder_dict`` minus the ``attn_mask`` buffers, which are rebuilt):
``patch_embed.proj.*``, ``slice_embed.*``, ``pos_embed``, ``depth_embed``, ``blocks.{i}.{norm1,norm2}.*``,
``blocks.{i}.attn.{qkv,proj}.*``, ``blocks.{i}.attn.{rel_pos_h,rel_pos_w,rel_pos_d,lr}``,
``blocks.{i}.mlp.{lin1,lin2}.*``, ``blocks.{i}.adapter.{linear1,conv,linear2}.*``, ``neck_3d.{k}.{0,1,2,3}.*``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks.attention_utils import get_rel_pos
from monai.networks.nets.swin_unetr import compute_mask, window_partition, window_reverse
from torch import nn

from ..adapters import Conv3dAdapter
from ..sam.common import LayerNorm2d, MLPBlock
from ..sam.image_encoder import Attention, PatchEmbed

__all__ = ["INPUT_PATHS", "Attention3d", "Block3d", "ImageEncoder3d", "LayerNorm3d", "linear_upsample_matrix"]

#: How the encoder embeds its input: ``"fused"`` = one strided Conv3d on the crop (exact equivalent, default);
#: ``"literal"`` = trilinear upsampling then the per-slice 2-D patch conv and the depth conv, as published.
INPUT_PATHS = ("fused", "literal")


def linear_upsample_matrix(scale: int, patch: int, dtype=torch.float32) -> torch.Tensor:
    """Weights ``(patch, patch // scale + 2)`` of ``F.interpolate(scale_factor=scale, mode="linear",
    align_corners=False)`` for one output patch, over the input window it reads.

    Output sample ``u`` of patch ``p`` reads input samples ``p * patch / scale - 1 + a`` for ``a`` in the window;
    with the input replicate-padded by 1 on each side (which reproduces the clamping at the borders) the window
    starts at index ``p * patch / scale`` of the padded input.
    """
    width = patch // scale + 2
    m = torch.zeros(patch, width, dtype=torch.float64)
    for u in range(patch):
        r = (u + 0.5) / scale + 0.5  # source coordinate in the padded window
        f = int(r)
        m[u, f] += 1.0 - (r - f)
        if r > f:
            m[u, f + 1] += r - f
    return m.to(dtype)


class LayerNorm3d(LayerNorm2d):
    """Channel-wise LayerNorm of ``(B, C, H, W, D)`` maps; ``weight``/``bias`` of shape ``(C,)``."""


class Attention3d(Attention):
    """Multi-head attention in cubic windows with 3-axis decomposed relative position.

    ``forward(x (B * nW, w, w, w, dim), mask (nW, w**3, w**3) or None) -> same shape as x``. SAM's ``qkv``,
    ``proj`` and ``rel_pos_h/w`` (``2 * table_size - 1`` rows, SAM's sizes, so SAM's tables load) plus a new
    ``rel_pos_d``; the tables are resized linearly to ``2w - 1`` rows on every forward, and the bias is scaled by
    the (frozen) scalar ``lr``. Without autograd, windows are processed ``inference_chunk`` at a time (the bias is
    ``heads * N * N`` floats a window).
    """

    def __init__(
        self, dim: int, num_heads: int, table_size: int, qkv_bias: bool = True, inference_chunk: int = 8
    ) -> None:
        super().__init__(dim, num_heads, qkv_bias, use_rel_pos=True, input_size=(table_size, table_size))
        self.rel_pos_d = nn.Parameter(torch.zeros_like(self.rel_pos_h))
        self.lr = nn.Parameter(torch.tensor(1.0))
        self.inference_chunk = inference_chunk

    def rel_pos_bias_3d(self, q: torch.Tensor, window: int) -> torch.Tensor:
        """``q (Bw, heads, w**3, hd)`` (unscaled) -> bias ``(Bw, heads, w**3, w**3)``:
        ``q . R_h[h - h'] + q . R_w[w - w'] + q . R_d[d - d']`` (MONAI's ``get_rel_pos`` does the resizing)."""
        bw, n_heads, _, hd = q.shape
        r_q = q.reshape(bw, n_heads, window, window, window, hd)
        tables = [get_rel_pos(window, window, t).to(q.dtype) for t in (self.rel_pos_h, self.rel_pos_w, self.rel_pos_d)]
        b_h = torch.einsum("bnhwdc,hkc->bnhwdk", r_q, tables[0])
        b_w = torch.einsum("bnhwdc,wkc->bnhwdk", r_q, tables[1])
        b_d = torch.einsum("bnhwdc,dkc->bnhwdk", r_q, tables[2])
        bias = b_h[..., :, None, None] + b_w[..., None, :, None] + b_d[..., None, None, :]
        return bias.reshape(bw, n_heads, window**3, window**3)

    def attend(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Attention of windows ``x (Bw, w, w, w, dim)`` with their shift ``mask (Bw, N, N)`` or ``None``."""
        bw, w = x.shape[0], x.shape[1]
        n = w**3
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = self.lr * self.rel_pos_bias_3d(q, w)
        if mask is not None:
            bias = bias + mask[:, None].to(bias.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(x.shape))

    # Not a drop-in for the 2-D Attention (3-D windows and a shift mask in, not a bias workspace): it reuses its
    # projections and tables.
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        n_windows = x.shape[0] if mask is None else mask.shape[0]
        masks = None if mask is None else mask.repeat(x.shape[0] // n_windows, 1, 1)
        if torch.is_grad_enabled() or x.shape[0] <= self.inference_chunk:
            return self.attend(x, masks)
        # Without autograd, windows in chunks bound the (windows, heads, N, N) bias: same result, less memory.
        return torch.cat(
            [
                self.attend(
                    x[i : i + self.inference_chunk], None if masks is None else masks[i : i + self.inference_chunk]
                )
                for i in range(0, x.shape[0], self.inference_chunk)
            ]
        )


class Block3d(nn.Module):
    """Adapter, then (shifted) cubic-window attention and MLP, pre-norm: ``(B, H, W, D, dim)`` -> same.

    ``x = adapter(x); x = x + unshift(attn(windows(shift(norm1(x))))); x = x + mlp(norm2(x))``. Shifted blocks
    roll the grid by ``-shift`` before partitioning and need the :func:`compute_mask` of the grid in ``forward``.
    Without autograd the MLP runs on eight slabs of the grid in turn (same result, less memory).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: int,
        shift: int,
        table_size: int,
        mlp_ratio: float = 4.0,
        adapter_dim: int | None = None,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.adapter = Conv3dAdapter(dim, adapter_dim)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention3d(dim, num_heads, table_size)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), nn.GELU)

    def attend(self, x: torch.Tensor, shift_mask: torch.Tensor | None) -> torch.Tensor:
        """Window attention on the normed grid ``(B, H, W, D, dim)``, shifted when ``self.shift > 0``."""
        dims = x.shape[:4]
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift,) * 3, dims=(1, 2, 3))
        w = self.window
        windows = window_partition(x, (w, w, w)).view(-1, w, w, w, x.shape[-1])
        out = window_reverse(self.attn(windows, shift_mask if self.shift else None), (w, w, w), dims)
        if self.shift:
            out = torch.roll(out, shifts=(self.shift,) * 3, dims=(1, 2, 3))
        return out

    def forward(self, x: torch.Tensor, shift_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.adapter(x)
        x = x + self.attend(self.norm1(x), shift_mask)
        if torch.is_grad_enabled():
            return x + self.mlp(self.norm2(x))
        # Without autograd, the MLP runs on slabs of the grid: its 4x wider hidden layer stays small.
        return torch.cat([s + self.mlp(self.norm2(s)) for s in x.split(max(1, x.shape[1] // 8), dim=1)], dim=1)


def _neck(dim: int, out_chans: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(dim, out_chans, kernel_size=1, bias=False),
        LayerNorm3d(out_chans),
        nn.Conv3d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
        LayerNorm3d(out_chans),
    )


class ImageEncoder3d(nn.Module):
    """SAM ViT lifted to 3-D: factorised patch embedding, pooled SAM + depth position, adapter blocks in cubic
    (shifted) windows, and one 3-D neck per tapped block.

    ``forward(x (B, C, D, H, W))`` with ``D = H = W = roi_size`` and ``C`` = 1 or ``in_chans`` (a single channel
    stands for ``in_chans`` identical copies, as the published 3-channel input is) -> list of
    ``len(tap_blocks)`` features ``(B, out_chans, G, G, G)``, ``G = roi_size * upsample / patch_size``, in block
    order (published: blocks 3, 6, 9, 12).

    Args:
        roi_size: crop edge in voxels (128).
        upsample: integer factor of the published trilinear upsampling before the patch conv (4: 128 -> 512).
        patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio: the SAM ViT (16, 3, 768, 12, 12, 4).
        sam_grid: SAM's token grid (64 = 1024 / 16); its ``pos_embed`` is average-pooled to ``G``.
        sam_window: SAM's window size (14); sizes the rel-pos tables of SAM's window blocks.
        global_attn_indexes: SAM's global blocks, whose rel-pos tables have ``2 * sam_grid - 1`` rows. All blocks
            here use cubic windows; these indexes only size the tables.
        window: cubic window edge in tokens (8); blocks with even index are shifted by ``window // 2``.
        adapter_dim: adapter bottleneck (``embed_dim // 2``).
        out_chans: neck width (256).
        tap_blocks: blocks whose outputs go through the necks (``(2, 5, 8, 11)``).
        input_path: one of :data:`INPUT_PATHS`.
    """

    shift_mask: torch.Tensor
    interp: torch.Tensor

    def __init__(
        self,
        roi_size: int = 128,
        upsample: int = 4,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        sam_grid: int = 64,
        sam_window: int = 14,
        global_attn_indexes: Sequence[int] = (2, 5, 8, 11),
        window: int = 8,
        adapter_dim: int | None = None,
        out_chans: int = 256,
        tap_blocks: Sequence[int] = (2, 5, 8, 11),
        input_path: str = "fused",
    ) -> None:
        super().__init__()
        if input_path not in INPUT_PATHS:
            raise ValueError(f"input_path must be one of {INPUT_PATHS}, got {input_path!r}")
        if patch_size % upsample:
            raise ValueError(f"patch_size {patch_size} must be a multiple of the upsampling factor {upsample}")
        self.grid, rem = divmod(roi_size * upsample, patch_size)
        if rem:
            raise ValueError(f"roi_size * upsample = {roi_size * upsample} is not a multiple of patch {patch_size}")
        if sam_grid % self.grid:
            raise ValueError(f"SAM's {sam_grid}x{sam_grid} pos_embed cannot be pooled to the {self.grid} token grid")
        if self.grid % window:
            raise ValueError(f"token grid {self.grid} is not a multiple of the window {window}")
        bad = [i for i in tap_blocks if not 0 <= i < depth]
        if bad:
            raise ValueError(f"tap_blocks {tuple(tap_blocks)} has entries outside 0..{depth - 1}: {bad}")
        self.roi_size, self.upsample, self.patch_size, self.in_chans = roi_size, upsample, patch_size, in_chans
        self.input_path = input_path
        self.tap_blocks = tuple(int(i) for i in tap_blocks)
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.slice_embed = nn.Conv3d(
            embed_dim, embed_dim, kernel_size=(1, 1, patch_size), stride=(1, 1, patch_size), groups=embed_dim
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, sam_grid, sam_grid, embed_dim))
        self.depth_embed = nn.Parameter(torch.ones(1, self.grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block3d(
                embed_dim,
                num_heads,
                window,
                shift=window // 2 if i % 2 == 0 else 0,
                table_size=sam_grid if i in global_attn_indexes else sam_window,
                mlp_ratio=mlp_ratio,
                adapter_dim=adapter_dim,
            )
            for i in range(depth)
        )
        self.neck_3d = nn.ModuleList(_neck(embed_dim, out_chans) for _ in self.tap_blocks)
        grid3 = (self.grid,) * 3
        mask = compute_mask(grid3, (window,) * 3, (window // 2,) * 3, None)
        self.register_buffer("shift_mask", mask, persistent=False)
        self.register_buffer("interp", linear_upsample_matrix(upsample, patch_size), persistent=False)

    def _check_input(self, x: torch.Tensor) -> None:
        r = self.roi_size
        if x.ndim != 5 or x.shape[1] not in (1, self.in_chans) or tuple(x.shape[2:]) != (r, r, r):
            raise ValueError(f"image encoder expects (B, 1 or {self.in_chans}, {r}, {r}, {r}), got {tuple(x.shape)}")

    def embed_literal(self, x: torch.Tensor) -> torch.Tensor:
        """Published path: trilinear upsampling, 2-D patch conv per slice (no grad), depthwise depth conv.

        ``(B, C, D, H, W) -> (B, G, G, G, dim)``; materialises ``(B, in_chans, D*s, H*s, W*s)``.
        """
        b = x.shape[0]
        if x.shape[1] == 1:
            x = x.expand(-1, self.in_chans, -1, -1, -1)
        with torch.no_grad():
            up = F.interpolate(x, scale_factor=self.upsample, mode="trilinear", align_corners=False)
            n_slices = up.shape[2]
            slices = up.transpose(1, 2).reshape(b * n_slices, self.in_chans, up.shape[3], up.shape[4])
            tokens = self.patch_embed.proj(slices)  # (B * D*s, dim, G, G)
        tokens = tokens.view(b, n_slices, *tokens.shape[1:]).permute(0, 2, 3, 4, 1)  # (B, dim, G, G, D*s)
        return self.slice_embed(tokens).permute(0, 2, 3, 4, 1)

    def fused_kernel(self, in_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight ``(dim, in_channels, k, k, k)`` and bias ``(dim,)`` of the single Conv3d (stride
        ``patch / upsample``, kernel ``k = stride + 2``, replicate padding 1) equal to the literal path.

        Depth part: the depthwise taps times the interpolation matrix; in-plane part: SAM's 16x16 kernel (no
        grad, as published) contracted with the matrix on both axes; one input channel sums the kernel over
        SAM's channels. Bias: ``b_slice + b_patch * sum(depth taps)``.
        """
        m = self.interp.to(self.slice_embed.weight.dtype)
        taps = self.slice_embed.weight.flatten(1)  # (dim, patch)
        depth = taps @ m  # (dim, k)
        with torch.no_grad():
            w2d = self.patch_embed.proj.weight  # (dim, in_chans, patch, patch)
            plane = torch.einsum("ecuv,ua,vb->ecab", w2d, m, m)
            if in_channels == 1:
                plane = plane.sum(1, keepdim=True)
            b_patch = self.patch_embed.proj.bias
        b_slice = self.slice_embed.bias
        if b_slice is None or b_patch is None:  # both convs are built with a bias
            raise RuntimeError("the fused input path needs the biases of slice_embed and patch_embed.proj")
        weight = depth[:, None, :, None, None] * plane[:, :, None]
        bias = b_slice + b_patch * taps.sum(1)
        return weight, bias

    def embed_fused(self, x: torch.Tensor) -> torch.Tensor:
        """Exact equivalent of :meth:`embed_literal` as one Conv3d on the crop: ``(B, C, D, H, W) -> (B, G, G, G,
        dim)`` without the upsampled volume. Output axes are reordered to the published (H', W', D')."""
        weight, bias = self.fused_kernel(x.shape[1])
        out = F.conv3d(F.pad(x, (1,) * 6, mode="replicate"), weight, bias, stride=self.patch_size // self.upsample)
        return out.permute(0, 3, 4, 2, 1)  # (B, dim, D', H', W') -> (B, H', W', D', dim)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens with position: ``(B, C, D, H, W) -> (B, G, G, G, dim)``."""
        self._check_input(x)
        tokens = self.embed_fused(x) if self.input_path == "fused" else self.embed_literal(x)
        pool = self.pos_embed.shape[1] // self.grid
        pos = F.avg_pool2d(self.pos_embed.permute(0, 3, 1, 2), pool).permute(0, 2, 3, 1)  # (1, G, G, dim)
        return tokens + pos[:, :, :, None, :] + self.depth_embed[:, None, None, :, :]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.embed(x)
        taps = {}
        for i, block in enumerate(self.blocks):
            x = block(x, self.shift_mask)
            if i in self.tap_blocks:
                taps[i] = x
        return [neck(taps[i].permute(0, 4, 1, 2, 3)) for i, neck in zip(self.tap_blocks, self.neck_3d)]
