"""SAMUS (Lin et al., arXiv 2309.06824) and HQ-SAMUS on the SAM core (spec: samus_hq_samihs_medsam.md sections 1-2,
samus_samihs_polyp_addendum.md 3.3).

SAM ViT-B at 256 px, composed through the core's encoder hooks and block slots (no forked encoder)::

    image_context      CNNBranch: conv stem + 3 max-pool downs -> (B, 32, 32, 768) features in the context
    patch_embed        OverlappedPatchEmbed: resize 256 -> 264, SAM's 16x16 conv at stride 8 -> 32x32 tokens
    after_patch_embed  feature adapter Adapter(768, 0.25, skip)
    pos_embed          PositionAdapter: SAM's 64x64 table -> max-pool, conv 3x3, LayerNorm2d, GELU -> 32x32
    global blocks      before_attn: CrossBranchAttention (q from the normed tokens, k/v from the CNN features,
                       added to the attention input), then refines the CNN features for the next block;
                       parallel_mlp: Adapter(768, 0.25) scaled 0.5; rel-pos tables resized 127 -> 63 and trained
    before_neck        CNNFusion: tokens + 0.5 * CNN features

Trainable as published: the new modules and the global blocks' rel-pos tables; SAM's encoder weights, prompt
encoder and mask decoder are frozen. ViT-B: 39,653,120 trainable of 133,323,568. HQ-SAMUS adds HQ-SAM's HQ token
(:mod:`common.networks.hq_sam`) fed by the first global block's output: 40,724,224 of 134,394,672.
Input: grey images in [0, 1] (``"unit"``, no SAM mean/std), 1 channel (repeated to 3, as upstream) or 3.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any, NamedTuple, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from common.networks.adapters import Adapter
from common.networks.hq_sam import HQ_MODULES, HQMaskDecoder
from common.networks.sam import (
    DECODER_DEFAULTS,
    SAM_VIT_B_HINT,
    ContextTap,
    GreySam,
    ImageEncoderViT,
    LayerNorm2d,
    build_sam_vit,
    extract_state_dict,
    grey_to_rgb,
    load_leaving_new_modules,
    load_state_dict_file,
)

__all__ = [
    "HQ_SCHEDULES",
    "SAM_VIT_B_HINT",
    "TINY_SIZES",
    "CNNBranch",
    "CNNFusion",
    "CrossBranchAttention",
    "HQEmbeddings",
    "HQSamus",
    "OverlappedPatchEmbed",
    "PositionAdapter",
    "Samus",
    "build_samus",
    "from_upstream_keys",
    "load_sam_weights",
    "load_samus_weights",
    "new_module_keys",
    "set_trainable",
]

ADAPTER_RATIO = 0.25
MLP_ADAPTER_SCALE = 0.5
CNN_FUSION_SCALE = 0.5
#: Context key of the CNN branch features ``(B, h, w, C)``; of the HQ early feature (first global block output).
CNN_KEY = "samus_cnn"
EARLY_KEY = "hq_early"
#: ``"joint"``: SAMUS's trainables and the HQ modules, from SAM weights (schedule a); ``"hq_only"``: only the HQ
#: modules on a trained, frozen SAMUS, HQ-SAM style (schedule b; the encoder then runs without gradients).
HQ_SCHEDULES = ("joint", "hq_only")

#: Small sizes for tests and smoke runs (32 px, kernel 8 / stride 4 -> 8x8 tokens, 2 blocks):
#: ``build_samus(**TINY_SIZES)``.
TINY_SIZES: dict[str, Any] = dict(
    image_size=32,
    patch_kernel=8,
    patch_stride=4,
    pos_embed_grid=16,
    cnn_channels=(4, 8),
    embed_dim=16,
    depth=2,
    num_heads=2,
    window_size=3,
    global_attn_indexes=(1,),
    prompt_embed_dim=16,
    mask_in_chans=4,
    decoder_num_heads=2,
    decoder_mlp_dim=32,
    iou_head_hidden_dim=16,
)


def conv_norm_gelu(c_in: int, c_out: int) -> nn.Sequential:
    """Conv 3x3 (no bias, pad 1) -> LayerNorm2d -> GELU, ``(B, c_in, H, W) -> (B, c_out, H, W)`` (keys ``0``, ``1``)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), LayerNorm2d(c_out), nn.GELU())


def down_conv_norm_gelu(c_in: int, c_out: int) -> nn.Sequential:
    """Max-pool 2 -> :func:`conv_norm_gelu`: ``(B, c_in, H, W) -> (B, c_out, H/2, W/2)`` (keys ``1``, ``2``)."""
    return nn.Sequential(
        nn.MaxPool2d(2), nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), LayerNorm2d(c_out), nn.GELU()
    )


class OverlappedPatchEmbed(nn.Module):
    """Overlapping patches: images ``(B, C, S, S)`` resized bilinearly to ``S + kernel - stride`` (264 for SAMUS),
    then ``Conv2d(kernel, stride)`` -> tokens ``(B, S/stride, S/stride, embed_dim)`` channels-last. ``proj`` has
    SAM's patch-embedding shape (16x16 kernel), so SAM's weights load unchanged ("stride halved")."""

    def __init__(self, kernel_size: int = 16, stride: int = 8, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel_size, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        grow = self.kernel_size - self.stride
        x = F.interpolate(x, size=(h + grow, w + grow), mode="bilinear", align_corners=False)
        return self.proj(x).permute(0, 2, 3, 1)


class CNNBranch(nn.Module):
    """``image_context`` hook: the CNN branch, ``images (B, in_chans, S, S)`` -> ``context[key]`` features
    ``(B, S / 2**len(channels), ..., embed_dim)`` channels-last. ``stem`` = :func:`conv_norm_gelu` to
    ``channels[0]``; ``downs`` = :func:`down_conv_norm_gelu` through ``channels[1:]`` to ``embed_dim``
    (SAMUS: 3 -> 64 at 256 px, 128, 256, 768 at 32 px; 2,142,272 parameters)."""

    def __init__(self, in_chans: int = 3, embed_dim: int = 768, channels: Sequence[int] = (64, 128, 256)) -> None:
        super().__init__()
        widths = [int(c) for c in channels] + [embed_dim]
        self.stem = conv_norm_gelu(in_chans, widths[0])
        self.downs = nn.ModuleList(down_conv_norm_gelu(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, images: torch.Tensor, context: dict[str, Any]) -> None:
        x = self.stem(images)
        for down in self.downs:
            x = down(x)
        context[CNN_KEY] = x.permute(0, 2, 3, 1)


class PositionAdapter(nn.Module):
    """``pos_embed`` hook: SAM's table ``(1, G, G, C)`` -> ``log2(G / grid)`` x :func:`down_conv_norm_gelu` ->
    ``(1, grid, grid, C)`` (SAMUS: 64 -> 32, 5,309,952 parameters). The table itself stays SAM's (frozen)."""

    def __init__(self, embed_dim: int = 768, table_grid: int = 64, grid: int = 32) -> None:
        super().__init__()
        downs = math.log2(table_grid / grid)
        if downs < 0 or downs != int(downs):
            raise ValueError(f"the position table ({table_grid}) must be the token grid ({grid}) times a power of 2")
        self.downs = nn.ModuleList(down_conv_norm_gelu(embed_dim, embed_dim) for _ in range(int(downs)))

    def forward(self, table: torch.Tensor) -> torch.Tensor:
        x = table.permute(0, 3, 1, 2)
        for down in self.downs:
            x = down(x)
        return x.permute(0, 2, 3, 1)


class CrossBranchAttention(nn.Module):
    """``before_attn`` slot of a global block: ``xn + proj(softmax(q(xn) k(f)^T / sqrt(d)) v(f))`` with ``f`` the
    CNN features in the context (no rel-pos, no norm on ``f``); afterwards ``f`` is replaced by ``refine(f)``
    (:func:`conv_norm_gelu`) for the next global block. ``(B, h, w, C) -> (B, h, w, C)``; ViT-B: 7,672,320
    parameters (attention 2,362,368, refine 5,309,952)."""

    uses_context = True

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))
        self.refine = conv_norm_gelu(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        return x.reshape(b, h * w, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, xn: torch.Tensor, context: dict[str, Any]) -> torch.Tensor:
        if CNN_KEY not in context:
            raise ValueError("CrossBranchAttention needs the CNN branch features (image_context hook CNNBranch)")
        cnn = context[CNN_KEY]
        if cnn.shape[:3] != xn.shape[:3]:
            raise ValueError(f"CNN features {tuple(cnn.shape)} do not match the token grid {tuple(xn.shape)}")
        b, h, w, c = xn.shape
        out = F.scaled_dot_product_attention(
            self._heads(self.q(xn)), self._heads(self.k(cnn)), self._heads(self.v(cnn))
        )
        context[CNN_KEY] = self.refine(cnn.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return xn + self.proj(out.transpose(1, 2).reshape(b, h, w, c))


class CNNFusion(nn.Module):
    """``before_neck`` hook: ``tokens + scale * CNN features`` (both ``(B, h, w, C)``); no parameters."""

    uses_context = True

    def __init__(self, scale: float = CNN_FUSION_SCALE) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor, context: dict[str, Any]) -> torch.Tensor:
        return x + self.scale * context[CNN_KEY]


class Samus(GreySam):
    """SAMUS: :class:`~common.networks.sam.GreySam` with the SAMUS encoder (see the module docstring); prompts in
    the 256 px input frame; ``use_boxes=False`` is upstream's points-only forward."""


class HQEmbeddings(NamedTuple):
    """What :meth:`HQSamus.encode` returns: ``embeddings (B, D, h, w)`` and the first global block's output
    ``early (B, h, w, C)``; pass both back to :meth:`HQSamus.decode` (e.g. reused across prompts)."""

    embeddings: torch.Tensor
    early: torch.Tensor


class HQSamus(Samus):
    """HQ-SAMUS: SAMUS with :class:`~common.networks.hq_sam.HQMaskDecoder` (``hq_token_only`` on the decoder).

    :meth:`encode` returns :class:`HQEmbeddings`. When no encoder parameter trains (schedule ``"hq_only"``) the
    encoder runs without gradients, as HQ-SAM does. Output masks ``(B, 1, 4h, 4w)``, the SAMUS low-res size.
    """

    # HQEmbeddings instead of a tensor: the HQ decoder also needs the early feature.
    def encode(self, images: torch.Tensor) -> HQEmbeddings:  # type: ignore[override]
        trains = any(p.requires_grad for p in self.image_encoder.parameters())
        context: dict[str, Any] = {}
        with torch.set_grad_enabled(torch.is_grad_enabled() and trains):
            embeddings = self.image_encoder(grey_to_rgb(images), context=context)
        return HQEmbeddings(embeddings, context[EARLY_KEY])

    def decode(self, image_embeddings, *args, **kwargs):
        if not isinstance(image_embeddings, HQEmbeddings):
            raise TypeError("HQSamus.decode takes the HQEmbeddings returned by HQSamus.encode")
        kwargs["decoder_inputs"] = {"early_features": image_embeddings.early}
        return super().decode(image_embeddings.embeddings, *args, **kwargs)


def _samus_encoder(enc: ImageEncoderViT, patch_kernel: int, patch_stride: int, cnn_channels: Sequence[int]) -> None:
    """Fit the SAMUS modules into a SAM encoder built for ``img_size`` at ``patch_size = patch_stride``."""
    grid = enc.img_size // patch_stride
    if 2 ** len(cnn_channels) != patch_stride:
        raise ValueError(
            f"the CNN branch downsamples 2**{len(cnn_channels)}; it must equal patch_stride {patch_stride}"
        )
    if enc.pos_embed is None:
        raise ValueError("SAMUS adapts SAM's absolute position table: use_abs_pos must be True")
    dim = enc.embed_dim
    enc.patch_embed = OverlappedPatchEmbed(patch_kernel, patch_stride, enc.in_chans, dim)  # type: ignore[assignment]
    enc.set_hook("image_context", CNNBranch(enc.in_chans, dim, cnn_channels))
    enc.set_hook("after_patch_embed", Adapter(dim, ADAPTER_RATIO, nn.GELU, skip=True))
    enc.set_hook("pos_embed", PositionAdapter(dim, enc.pos_embed.shape[1], grid))
    enc.set_hook("before_neck", CNNFusion())
    for i in enc.global_attn_indexes:
        block = enc.block(i)
        block.set_adapter("before_attn", CrossBranchAttention(dim, block.attn.num_heads))
        block.set_adapter("parallel_mlp", Adapter(dim, ADAPTER_RATIO, nn.GELU, skip=False), scale=MLP_ADAPTER_SCALE)


def build_samus(
    image_size: int = 256,
    patch_kernel: int = 16,
    patch_stride: int = 8,
    pos_embed_grid: int = 64,
    cnn_channels: Sequence[int] = (64, 128, 256),
    hq: bool = False,
    hq_token_only: bool = False,
    hq_schedule: str = "joint",
    use_boxes: bool = True,
    train_mask_decoder: bool = False,
    preset: str = "vit_b",
    device: str | torch.device | None = None,
    **overrides,
) -> Samus:
    """SAMUS (or HQ-SAMUS with ``hq=True``) at ``image_size`` px, with the published trainable set.

    ``patch_kernel`` / ``patch_stride``: the overlapped patch embedding (token grid ``image_size / patch_stride``);
    ``pos_embed_grid``: side of SAM's position table (64 for a 1024 px checkpoint); ``cnn_channels``: CNN branch
    widths before ``embed_dim`` (one 2x down each). ``hq_token_only`` / ``hq_schedule``: see :class:`HQMaskDecoder`
    and :data:`HQ_SCHEDULES`. ``use_boxes``: see :class:`Samus`. ``train_mask_decoder``: also train SAM's mask
    decoder (not published: SAMUS freezes it; HQ-SAM's authors suggest it for task-specific fine-tuning, and a
    decoder without SAM's weights must train). ``overrides``: any :func:`build_sam_vit` size
    (tests build tiny models: :data:`TINY_SIZES`). ``device="meta"`` builds without memory (parameter counts).
    """
    if hq_schedule not in HQ_SCHEDULES:
        raise ValueError(f"hq_schedule must be one of {HQ_SCHEDULES}, got {hq_schedule!r}")
    if hq_schedule == "hq_only" and not hq:
        raise ValueError("hq_schedule='hq_only' trains only the HQ modules: it needs hq=True")
    sizes = {**DECODER_DEFAULTS, **{k: v for k, v in overrides.items() if k in DECODER_DEFAULTS}}
    with torch.device(device) if device is not None else nullcontext():
        sam = build_sam_vit(
            preset, image_size=image_size, patch_size=patch_stride, pos_embed_grid=pos_embed_grid, **overrides
        )
        enc = cast(ImageEncoderViT, sam.image_encoder)
        _samus_encoder(enc, patch_kernel, patch_stride, cnn_channels)
        decoder = sam.mask_decoder
        if hq:
            enc.block(enc.global_attn_indexes[0]).set_adapter("after_block", ContextTap(EARLY_KEY))
            decoder = HQMaskDecoder(
                decoder.transformer_dim,
                decoder.transformer,
                vit_dim=enc.embed_dim,
                num_multimask_outputs=sizes["num_multimask_outputs"],
                iou_head_depth=sizes["iou_head_depth"],
                iou_head_hidden_dim=sizes["iou_head_hidden_dim"],
                hq_token_only=hq_token_only,
            )
        cls = HQSamus if hq else Samus
        model = cls(enc, sam.prompt_encoder, decoder, use_boxes=use_boxes)
    return set_trainable(model, hq_schedule, train_mask_decoder)


SamusT = TypeVar("SamusT", bound=Samus)


def _is_new_samus_key(name: str) -> bool:
    return name.startswith("image_encoder.hooks.") or ".adapters." in name


def _is_hq_key(name: str) -> bool:
    return name.startswith(tuple(f"mask_decoder.{m}." for m in HQ_MODULES))


def _is_global_rel_pos(name: str, global_blocks: Sequence[int]) -> bool:
    return any(name.startswith(f"image_encoder.blocks.{i}.attn.rel_pos_") for i in global_blocks)


def set_trainable(model: SamusT, hq_schedule: str = "joint", train_mask_decoder: bool = False) -> SamusT:
    """Published trainable set: SAMUS's new modules and the global blocks' rel-pos tables (global blocks from
    ``global_attn_indexes``, not name matching), plus the HQ modules; ``hq_schedule="hq_only"``: HQ modules only.
    ``train_mask_decoder`` adds the whole mask decoder (see :func:`build_samus`)."""
    blocks = cast(ImageEncoderViT, model.image_encoder).global_attn_indexes
    for name, p in model.named_parameters():
        samus = _is_new_samus_key(name) or _is_global_rel_pos(name, blocks)
        decoder = train_mask_decoder and name.startswith("mask_decoder.")
        p.requires_grad_(_is_hq_key(name) or decoder or (samus and hq_schedule == "joint"))
    return model


def new_module_keys(model: Samus, include_samus: bool = True) -> list[str]:
    """State-dict keys of the modules SAMUS (``include_samus``) and HQ-SAMUS add to SAM."""
    return [k for k in model.state_dict() if (include_samus and _is_new_samus_key(k)) or _is_hq_key(k)]


def _resize_table(table: torch.Tensor, length: int) -> torch.Tensor:
    """A rel-pos table ``(L, d)`` resized bilinearly (``align_corners=False``) to ``(length, d)``."""
    return F.interpolate(table[None, None].float(), size=(length, table.shape[1]), mode="bilinear")[0, 0].to(table)


def load_sam_weights(model: Samus, sam: str | os.PathLike | Mapping) -> list[str]:
    """Initialise from an official SAM checkpoint (``sam_vit_b_01ec64.pth`` layout): every SAM key loads, the
    global blocks' rel-pos tables resized (127 -> 63 for ViT-B at 256 px), the 64x64 position table kept for the
    position adapter. Raises :class:`CheckpointError` unless the keys left at their initialisation are exactly the
    new modules' (:func:`new_module_keys`). Returns those keys."""
    if isinstance(sam, (str, os.PathLike)):
        state = load_state_dict_file(sam, hint=SAM_VIT_B_HINT)
    else:
        state = extract_state_dict(dict(sam))
    target = model.state_dict()
    for i in cast(ImageEncoderViT, model.image_encoder).global_attn_indexes:
        for axis in ("h", "w"):
            key = f"image_encoder.blocks.{i}.attn.rel_pos_{axis}"
            if key in state and key in target and state[key].shape != target[key].shape:
                state[key] = _resize_table(state[key], target[key].shape[0])
    expected = new_module_keys(model)
    load_leaving_new_modules(model, state, expected, "SAM checkpoint")
    return expected


def load_samus_weights(model: HQSamus, samus: str | os.PathLike | Mapping) -> list[str]:
    """HQ-only schedule: load a trained SAMUS ``model.pt`` into HQ-SAMUS; only the HQ modules may be missing."""
    state = load_state_dict_file(samus) if isinstance(samus, (str, os.PathLike)) else extract_state_dict(samus)
    expected = new_module_keys(model, include_samus=False)
    load_leaving_new_modules(model, state, expected, "SAMUS checkpoint")
    return expected


#: Upstream SAMUS (``xianlin7/SAMUS``) module paths -> ours, applied to keys under ``image_encoder.``.
_UPSTREAM_ENCODER_RENAMES: tuple[tuple[str, Callable[[list[str]], list[str]]], ...] = (
    ("cnn_embed.inc.conv.", lambda rest: ["hooks", "image_context", "stem", *rest]),
    ("cnn_embed.downs.", lambda rest: ["hooks", "image_context", "downs", rest[0], *rest[2:]]),  # drop maxpool_conv
    ("input_Adapter.", lambda rest: ["hooks", "after_patch_embed", *rest]),
    ("post_pos_embed.downs.", lambda rest: ["hooks", "pos_embed", "downs", rest[0], *rest[2:]]),
)
_UPSTREAM_BLOCK_RENAMES = {
    "MLP_Adapter": ["adapters", "parallel_mlp"],
    "Space_Adapter": ["adapters", "before_attn"],
    "refine_Adapter": ["adapters", "before_attn", "refine"],
}


def _adapter_names(parts: list[str]) -> list[str]:
    return [{"D_fc1": "fc1", "D_fc2": "fc2"}.get(p, p) for p in parts]


def from_upstream_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' SAMUS state dict (``xianlin7/SAMUS`` module names: ``cnn_embed``, ``input_Adapter``,
    ``post_pos_embed``, ``blocks.{i}.{MLP,Space,refine}_Adapter``) renamed to this package's layout; SAM's own keys
    are unchanged. Load the result with ``strict=True`` (:func:`load_checkpoint`)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in extract_state_dict(dict(state)).items():
        new = key
        if key.startswith("image_encoder."):
            rest = key[len("image_encoder.") :]
            for prefix, rename in _UPSTREAM_ENCODER_RENAMES:
                if rest.startswith(prefix):
                    new = "image_encoder." + ".".join(_adapter_names(rename(rest[len(prefix) :].split("."))))
                    break
            else:
                parts = rest.split(".")
                if parts[0] == "blocks" and len(parts) > 3 and parts[2] in _UPSTREAM_BLOCK_RENAMES:
                    inner = parts[3:]
                    if parts[2] == "refine_Adapter":
                        inner = inner[1:]  # refine_Adapter.conv.{i} -> refine.{i}
                    renamed = ["blocks", parts[1], *_UPSTREAM_BLOCK_RENAMES[parts[2]], *_adapter_names(inner)]
                    new = "image_encoder." + ".".join(renamed)
        out[new] = value
    return out
