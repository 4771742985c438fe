"""SAM's ViT image encoder (ViTDet style), with adapter slots in every block and encoder-level hooks.

Key layout (identical to the official ``sam_vit_{b,l,h}`` checkpoints, under ``image_encoder.``):
``patch_embed.proj.{weight,bias}``, ``pos_embed``, ``blocks.{i}.norm1/norm2.{weight,bias}``,
``blocks.{i}.attn.qkv/proj.{weight,bias}``, ``blocks.{i}.attn.rel_pos_h/rel_pos_w``,
``blocks.{i}.mlp.lin1/lin2.{weight,bias}``, ``neck.{0,2}.weight``, ``neck.{1,3}.{weight,bias}``.
Adapters placed with :meth:`Block.set_adapter` appear under ``blocks.{i}.adapters.{slot}.*``, encoder hooks set
with :meth:`ImageEncoderViT.set_hook` under ``hooks.{name}.*``; unused slots and hooks add no keys.

Attention runs through :func:`torch.nn.functional.scaled_dot_product_attention`; SAM's decomposed relative
position bias is computed separately and passed as the additive ``attn_mask``. Without autograd, the encoder's
blocks write that bias into one tensor per shape kept for the forward (under :data:`BIAS_WORKSPACE` in its
context, removed when the blocks are done) instead of a fresh one per block: at 1024 px each global block's bias
is 805 MB (ViT-B), and writing it into memory the process has just used, rather than pages it must fault in
again, makes the encoder about 1.08x faster.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from monai.networks.blocks.attention_utils import get_rel_pos
from torch import nn

from .common import LayerNorm2d, MLPBlock
from .slots import AdapterSlots, call_slot_module, check_place, place_module

__all__ = [
    "ADAPTER_SLOTS",
    "BIAS_WORKSPACE",
    "ENCODER_HOOKS",
    "VIT_PRESETS",
    "Attention",
    "Block",
    "ImageEncoderViT",
    "PatchEmbed",
    "ResizePosEmbed",
    "window_partition",
    "window_unpartition",
]

#: Context key of the per-forward ``{(shape, dtype, device, inference mode): tensor}`` the blocks' attention writes
#: its relative-position bias into when autograd is off.
BIAS_WORKSPACE = "rel_pos_bias_workspace"

_COMMON = dict(patch_size=16, window_size=14, out_chans=256, mlp_ratio=4.0, qkv_bias=True, use_rel_pos=True)

#: Published SAM encoder sizes (all with patch 16, window 14, neck 256, MLP ratio 4, qkv bias, rel-pos).
VIT_PRESETS: dict[str, dict] = {
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11), **_COMMON),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23), **_COMMON),
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31), **_COMMON),
}

#: Adapter slots of :class:`Block` and their kind ("serial": output replaces the tensor; "parallel": output is
#: multiplied by the slot's scale and added to a branch).
ADAPTER_SLOTS: dict[str, str] = {
    "before_block": "serial",
    "before_attn": "serial",
    "after_attn": "serial",
    "parallel_attn": "parallel",
    "before_mlp": "serial",
    "after_mlp": "serial",
    "parallel_mlp": "parallel",
    "after_block": "serial",
}

#: Encoder-level hooks of :class:`ImageEncoderViT` (set with :meth:`ImageEncoderViT.set_hook`), in forward order.
ENCODER_HOOKS: dict[str, str] = {
    "image_context": "module(images (B, in_chans, H, W), context) writes into the forward context (a CNN branch)",
    "after_patch_embed": "tokens (B, h, w, C) -> (B, h, w, C), before the position embedding is added",
    "pos_embed": "table (1, Hp, Wp, C) -> (1 or B, h, w, C), the position embedding added to the tokens",
    "before_neck": "tokens (B, h, w, C) -> (B, h, w, C), after the last block",
}


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split ``(B, H, W, C)`` into non-overlapping windows, zero-padding H and W up to multiples of the window.

    Returns ``(windows (B * nH * nW, window, window, C), (Hp, Wp))`` with the padded grid size.
    (MONAI's Swin ``window_partition`` neither pads nor returns the padded size, so it does not fit.)
    """
    b, h, w, c = x.shape
    pad_h = (window_size - h % window_size) % window_size
    pad_w = (window_size - w % window_size) % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window_size, window_size, wp // window_size, window_size, c)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)
    return windows, (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, window, window, C) -> (B, H, W, C)``, padding removed."""
    hp, wp = pad_hw
    h, w = hw
    n_h, n_w = hp // window_size, wp // window_size
    b = windows.shape[0] // (n_h * n_w)
    x = windows.view(b, n_h, n_w, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    if hp > h or wp > w:
        x = x[:, :h, :w, :].contiguous()
    return x


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: ``(B, in_chans, H, W) -> (B, H/patch, W/patch, embed_dim)`` (channels last)."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class Attention(nn.Module):
    """Multi-head self-attention on a 2-D token grid with optional decomposed relative position bias.

    ``forward``: ``(B, H, W, dim) -> (B, H, W, dim)``. With ``use_rel_pos`` the tables ``rel_pos_h`` and
    ``rel_pos_w`` have shape ``(2 * input_size - 1, head_dim)`` (zero-initialised, as SAM); they are resized
    linearly when the grid differs from ``input_size`` (MONAI's ``get_rel_pos``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("use_rel_pos=True needs input_size (the token grid the tables are sized for)")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, self.head_dim))

    def rel_pos_bias(
        self, q: torch.Tensor, hw: tuple[int, int], workspace: dict[tuple, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Decomposed relative position bias ``(B, heads, H*W, H*W)`` for unscaled queries ``q (B, heads, H*W, hd)``.

        bias[(i,j),(k,l)] = q_(i,j) . R_h[i-k] + q_(i,j) . R_w[j-l]. MONAI's ``add_decomposed_rel_pos`` adds this
        to an existing attention matrix; SDPA needs the bias alone, so only ``get_rel_pos`` is reused. With a
        ``workspace`` dict and autograd off (and not tracing or compiling), the bias is written into (and returned
        as a view of) the workspace's tensor of this shape, made on first use: the same values as a fresh tensor.
        """
        h, w = hw
        r_h = get_rel_pos(h, h, self.rel_pos_h)  # (h, h, hd)
        r_w = get_rel_pos(w, w, self.rel_pos_w)  # (w, w, hd)
        b, n_heads, _, hd = q.shape
        r_q = q.reshape(b, n_heads, h, w, hd)
        bias_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, r_h.to(q.dtype))
        bias_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, r_w.to(q.dtype))
        # Both terms contiguous (einsum may return permuted strides, which the broadcast sum would follow), so the
        # (b, n, hw, hw) bias comes out contiguous and the reshape is a view, not a second copy of it (805 MB per
        # ViT-B global block at 1024 px).
        terms = (bias_h.contiguous()[..., :, None], bias_w.contiguous()[..., None, :])  # -> (b, n, h, w, h_k, w_k)
        if workspace is None or torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling():
            bias = torch.add(*terms)  # autograd needs its own tensor; exporters (OpenVINO) take no ``out=``
        else:
            shape = (b, n_heads, h, w, h, w)
            key = (shape, q.dtype, q.device, torch.is_inference_mode_enabled())
            if key not in workspace:
                workspace[key] = torch.empty(shape, dtype=q.dtype, device=q.device)
            bias = torch.add(*terms, out=workspace[key])
        return bias.view(b, n_heads, h * w, h * w)

    def forward(self, x: torch.Tensor, workspace: dict[tuple, torch.Tensor] | None = None) -> torch.Tensor:
        """``(B, H, W, dim) -> (B, H, W, dim)``; ``workspace``: see :meth:`rel_pos_bias`."""
        b, h, w, c = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, hd)
        bias = self.rel_pos_bias(q, (h, w), workspace) if self.use_rel_pos else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.transpose(1, 2).reshape(b, h, w, c)
        return self.proj(out)


class Block(AdapterSlots):
    """ViT block (pre-norm attention + MLP) with windowed or global attention and adapter slots.

    ``forward(x, context=None)``: ``(B, H, W, dim) -> (B, H, W, dim)``. Window blocks (``window_size > 0``) pad the
    grid to a multiple of the window and attend within windows (padded tokens take part, as in SAM);
    ``window_size=0`` means global attention.

    Adapter slots (all see full, un-windowed ``(B, H, W, C)`` tensors; set with :meth:`set_adapter`)::

        x  = before_block(x)                         # serial, at the block input (3DSAM-adapter)
        s  = x
        xn = before_attn(norm1(x))                   # serial, on the attention input (SAMIHS attn adapter,
                                                     #   SAMUS cross-branch attention given its CNN features)
        a  = after_attn(attn(xn))                    # serial, on the attention output (MSA Space_Adapter)
        a  = a + scale * parallel_attn(xn)           # parallel to attention (e.g. MSA depth branch)
        x  = s + a
        xn = before_mlp(norm2(x))                    # serial, on the MLP input (SAMIHS mlp adapter)
        m  = after_mlp(mlp(xn))                      # serial, on the MLP output
        x  = x + m + scale * parallel_mlp(xn)        # parallel to the MLP (MSA MLP_Adapter, scale 0.5)
        x  = after_block(x)                          # serial, at the block output (e.g. a ContextTap)

    A serial module must include its own skip connection (e.g. ``Adapter(skip=True)``); a parallel module
    returns only its branch (``Adapter(skip=False)``). Modules with ``uses_context`` also get the forward
    ``context`` (see :mod:`common.networks.sam.slots`). Unused slots are skipped and add no parameters or
    state-dict keys; used slots store parameters under ``adapters.{slot}.*``.

    ``pad_before_norm`` (window blocks only): zero-pad the grid to a multiple of the window *before* ``norm1``, so
    padded tokens enter attention as the LayerNorm bias (then through ``before_attn``), as SAMIHS's and upstream
    MSA's code do; SAM pads after ``norm1`` (zeros). Not numerically neutral wherever the grid is not a multiple of
    the window (addendum 3.3 item 5). ``before_attn`` then sees the padded grid.
    """

    SLOTS = ADAPTER_SLOTS

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        window_size: int = 0,
        input_size: tuple[int, int] | None = None,
        norm_eps: float = 1e-6,
        act_layer: type[nn.Module] = nn.GELU,
        pad_before_norm: bool = False,
    ) -> None:
        super().__init__()
        self.pad_before_norm = pad_before_norm
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            input_size=input_size if window_size == 0 else (window_size, window_size),
        )
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), act_layer)
        self.window_size = window_size

    def attend(self, xn: torch.Tensor, workspace: dict[tuple, torch.Tensor] | None = None) -> torch.Tensor:
        """Windowed (or global) attention on the normed grid ``(B, H, W, C) -> (B, H, W, C)``; ``workspace``: see
        :meth:`Attention.rel_pos_bias`."""
        if self.window_size > 0:
            hw = (xn.shape[1], xn.shape[2])
            windows, pad_hw = window_partition(xn, self.window_size)
            return window_unpartition(self.attn(windows, workspace), self.window_size, pad_hw, hw)
        return self.attn(xn, workspace)

    def _normed_attention_input(self, x: torch.Tensor, context: dict[str, Any] | None) -> torch.Tensor:
        """``before_attn(norm1(x))``: ``(B, H, W, C)``, or with ``pad_before_norm`` the zero-padded grid
        ``(B, Hp, Wp, C)`` (the caller crops back to ``(H, W)``)."""
        if not (self.pad_before_norm and self.window_size > 0):
            return self._serial("before_attn", self.norm1(x), context)
        h, w = x.shape[1], x.shape[2]
        ws = self.window_size
        padded = F.pad(x, (0, 0, 0, (ws - w % ws) % ws, 0, (ws - h % ws) % ws))
        return self._serial("before_attn", self.norm1(padded), context)

    def forward(self, x: torch.Tensor, context: dict[str, Any] | None = None) -> torch.Tensor:
        x = self._serial("before_block", x, context)
        shortcut = x
        h, w = x.shape[1], x.shape[2]
        xn = self._normed_attention_input(x, context)
        workspace = None if context is None else context.setdefault(BIAS_WORKSPACE, {})
        a = self._serial("after_attn", self.attend(xn, workspace)[:, :h, :w], context)
        xn = xn[:, :h, :w]
        a = self._parallel("parallel_attn", xn, a, context)
        x = shortcut + a
        xn = self._serial("before_mlp", self.norm2(x), context)
        m = self._serial("after_mlp", self.mlp(xn), context)
        m = self._parallel("parallel_mlp", xn, m, context)
        return self._serial("after_block", x + m, context)


class ResizePosEmbed(nn.Module):
    """``pos_embed`` hook: SAM's absolute position table ``(1, Hp, Wp, C)`` resized to ``size`` token rows/columns.

    E.g. the 64x64 table of a 1024 px checkpoint for a 256 px encoder with patch 16 (``size=(16, 16)``).
    ``mode`` is a :func:`torch.nn.functional.interpolate` mode (``align_corners=False``; ``antialias`` for
    down-sizing with ``"bilinear"``/``"bicubic"``). No parameters: the table stays the checkpoint's and trains (or
    stays frozen) as loaded. A table already of ``size`` is returned unchanged.
    """

    def __init__(self, size: Sequence[int], mode: str = "bicubic", antialias: bool = False) -> None:
        super().__init__()
        self.size = (int(size[0]), int(size[1]))
        self.mode = mode
        self.antialias = antialias

    def forward(self, table: torch.Tensor) -> torch.Tensor:
        if tuple(table.shape[1:3]) == self.size:
            return table
        resized = F.interpolate(
            table.permute(0, 3, 1, 2), size=self.size, mode=self.mode, align_corners=False, antialias=self.antialias
        )
        return resized.permute(0, 2, 3, 1)


class ImageEncoderViT(nn.Module):
    """SAM image encoder: patch embedding, absolute position embedding, ViT blocks, conv neck.

    ``forward(images, context=None)``: images ``(B, in_chans, img_size, img_size)`` (no normalisation is applied
    here: see :mod:`common.transforms.sam_input`) -> embeddings ``(B, out_chans, img_size/patch, img_size/patch)``.
    Defaults are SAM ViT-B at 1024 px; see :data:`VIT_PRESETS` for ViT-L/H. ``global_attn_indexes`` lists the blocks
    with global attention, all others use ``window_size`` windows (``window_size=0``: all global).
    ``pos_embed_grid`` is the side of the absolute position table (default ``img_size // patch_size``); a table of
    another size (e.g. a 1024 px checkpoint's 64x64 in a 256 px encoder) needs a ``pos_embed`` hook such as
    :class:`ResizePosEmbed` that maps it to the token grid.

    Encoder hooks (:data:`ENCODER_HOOKS`, set with :meth:`set_hook`)::

        image_context(images, context)               # writes e.g. SAMUS's CNN branch features into context
        x = after_patch_embed(patch_embed(images))   # e.g. SAMUS's feature adapter
        x = x + pos_embed(table)                     # e.g. ResizePosEmbed, SAMUS's position adapter
        x = blocks(x, context)                       # adapter slots of every Block
        embeddings = neck(before_neck(x))            # e.g. SAMUS's fusion of the CNN features

    ``context`` is one dict per forward (created when not given; pass your own to read what modules left in it),
    handed to every slot and hook module with ``uses_context``. With no hook set the forward is SAM's.

    ``shared`` holds modules that several slot modules use (SAMIHS's shared adapter projections): the encoder owns
    them (keys ``shared.{name}.*``), the slot modules keep plain references. ``pad_before_norm``: see :class:`Block`.
    """

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 14,
        global_attn_indexes: Sequence[int] = (2, 5, 8, 11),
        use_abs_pos: bool = True,
        norm_eps: float = 1e-6,
        act_layer: type[nn.Module] = nn.GELU,
        pos_embed_grid: int | None = None,
        pad_before_norm: bool = False,
    ) -> None:
        super().__init__()
        bad = [i for i in global_attn_indexes if not 0 <= int(i) < depth]
        if bad:
            raise ValueError(
                f"global_attn_indexes {tuple(global_attn_indexes)} has entries outside 0..{depth - 1}: {bad}"
            )
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.out_chans = out_chans
        self.global_attn_indexes = tuple(int(i) for i in global_attn_indexes)
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        self.pos_embed: nn.Parameter | None = None
        if use_abs_pos:
            table = grid if pos_embed_grid is None else int(pos_embed_grid)
            self.pos_embed = nn.Parameter(torch.zeros(1, table, table, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                use_rel_pos=use_rel_pos,
                window_size=0 if i in self.global_attn_indexes else window_size,
                input_size=(grid, grid),
                norm_eps=norm_eps,
                act_layer=act_layer,
                pad_before_norm=pad_before_norm,
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )
        self.hooks = nn.ModuleDict()
        self.shared = nn.ModuleDict()

    def set_adapters(
        self,
        slot: str,
        factory: Callable[[int], nn.Module | None],
        blocks: Iterable[int] | None = None,
        scale: float = 1.0,
    ) -> None:
        """Place ``factory(block_index)`` in ``slot`` of each listed block (default: all blocks)."""
        for i in range(len(self.blocks)) if blocks is None else blocks:
            self.block(i).set_adapter(slot, factory(i), scale=scale)

    def block(self, index: int) -> Block:
        """Block ``index`` (typed access to :attr:`blocks`)."""
        return cast(Block, self.blocks[index])

    def set_hook(self, name: str, module: nn.Module | None) -> None:
        """Place ``module`` at the encoder hook ``name`` (:data:`ENCODER_HOOKS`), or remove it with ``None``."""
        place_module(self.hooks, ENCODER_HOOKS, "encoder hook", name, module)

    def get_hook(self, name: str) -> nn.Module | None:
        """The module at hook ``name``, or ``None``."""
        check_place(ENCODER_HOOKS, "encoder hook", name)
        return self.hooks[name] if name in self.hooks else None

    def _hook(self, name: str, x: torch.Tensor, context: dict[str, Any]) -> torch.Tensor:
        return call_slot_module(self.hooks[name], x, context) if name in self.hooks else x

    def embed_tokens(self, x: torch.Tensor, context: dict[str, Any] | None = None) -> torch.Tensor:
        """Patch embedding plus absolute position: ``(B, in_chans, S, S) -> (B, S/patch, S/patch, embed_dim)``."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"image encoder expects images of shape (B, {self.in_chans}, {self.img_size}, {self.img_size}), "
                f"got {tuple(x.shape)}"
            )
        context = {} if context is None else context
        x = self._hook("after_patch_embed", self.patch_embed(x), context)
        if self.pos_embed is not None:
            pos = self._hook("pos_embed", self.pos_embed, context)
            if x.shape[1:3] != pos.shape[1:3]:
                raise ValueError(
                    f"input of {tuple(x.shape[1:3])} tokens does not match the pos_embed grid "
                    f"{tuple(pos.shape[1:3])}: the encoder was built for {self.img_size}x{self.img_size} images; "
                    "resize/pad the input to that size, or set a 'pos_embed' hook (e.g. ResizePosEmbed) that maps "
                    "the table to the token grid"
                )
            x = x + pos
        return x

    def forward(self, x: torch.Tensor, context: dict[str, Any] | None = None) -> torch.Tensor:
        context = {} if context is None else context
        if "image_context" in self.hooks:
            self.hooks["image_context"](x, context)
        x = self.embed_tokens(x, context)
        try:
            for blk in self.blocks:
                x = blk(x, context)
        finally:
            context.pop(BIAS_WORKSPACE, None)  # the blocks' scratch memory, freed with the forward
        x = self._hook("before_neck", x, context)
        return self.neck(x.permute(0, 3, 1, 2))
