"""Builders for SAM at the published sizes, or any size through overrides."""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch

from .checkpoint import load_checkpoint
from .image_encoder import VIT_PRESETS, ImageEncoderViT
from .mask_decoder import MaskDecoder
from .model import Sam
from .prompt_encoder import PromptEncoder
from .transformer import TwoWayTransformer

__all__ = ["DECODER_DEFAULTS", "TINY_OVERRIDES", "build_sam_vit", "build_tiny_sam"]

#: Prompt-encoder/decoder sizes of SAM (the same for ViT-B/L/H); ``decoder_efficientsam_block``: see
#: :class:`~common.networks.sam.transformer.TwoWayAttentionBlock` (False is SAM).
DECODER_DEFAULTS: dict = dict(
    prompt_embed_dim=256,
    mask_in_chans=16,
    decoder_depth=2,
    decoder_num_heads=8,
    decoder_mlp_dim=2048,
    attention_downsample_rate=2,
    num_multimask_outputs=3,
    iou_head_depth=3,
    iou_head_hidden_dim=256,
    decoder_efficientsam_block=False,
)

_ENCODER_KEYS = (
    "patch_size",
    "in_chans",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "qkv_bias",
    "use_rel_pos",
    "window_size",
    "global_attn_indexes",
    "use_abs_pos",
    "norm_eps",
    "pos_embed_grid",
    "pad_before_norm",
)

#: Overrides giving a SAM that runs in well under a second on CPU (64 px input, 4x4 token grid).
TINY_OVERRIDES: dict = dict(
    image_size=64,
    embed_dim=32,
    depth=2,
    num_heads=2,
    window_size=4,
    global_attn_indexes=(1,),
    prompt_embed_dim=32,
    mask_in_chans=8,
    decoder_depth=2,
    decoder_num_heads=2,
    decoder_mlp_dim=64,
    iou_head_hidden_dim=32,
)


def build_sam_vit(
    preset: str = "vit_b",
    image_size: int = 1024,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_hint: str | None = None,
    device: str | torch.device | None = None,
    **overrides,
) -> Sam:
    """Build SAM with the ``preset`` ViT (``"vit_b"``, ``"vit_l"``, ``"vit_h"``) for ``image_size`` px input.

    ``overrides`` may set any encoder size (``patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio,
    qkv_bias, use_rel_pos, window_size, global_attn_indexes, use_abs_pos, norm_eps, pos_embed_grid,
    pad_before_norm``) or decoder size (:data:`DECODER_DEFAULTS`: ``prompt_embed_dim`` is the neck/prompt/decoder
    width). The image embedding is ``image_size // patch_size`` square. ``checkpoint`` loads a state dict with
    ``strict=True`` (``checkpoint_hint`` is added to the file-not-found message). ``device="meta"`` builds without
    memory.
    """
    if preset not in VIT_PRESETS:
        raise ValueError(f"unknown SAM preset {preset!r}; expected one of {sorted(VIT_PRESETS)}")
    unknown = sorted(set(overrides) - set(_ENCODER_KEYS) - set(DECODER_DEFAULTS) - {"out_chans"})
    if unknown:
        raise TypeError(
            f"build_sam_vit got unknown override(s) {unknown}; valid: {sorted(_ENCODER_KEYS + tuple(DECODER_DEFAULTS))}"
        )
    enc = {k: v for k, v in VIT_PRESETS[preset].items() if k != "out_chans"}
    enc.update({k: v for k, v in overrides.items() if k in _ENCODER_KEYS})
    dec = {**DECODER_DEFAULTS, **{k: v for k, v in overrides.items() if k in DECODER_DEFAULTS}}
    if "out_chans" in overrides:
        dec["prompt_embed_dim"] = overrides["out_chans"]
    dim = dec["prompt_embed_dim"]
    grid = image_size // enc["patch_size"]

    with torch.device(device) if device is not None else nullcontext():
        sam = Sam(
            image_encoder=ImageEncoderViT(img_size=image_size, out_chans=dim, **enc),
            prompt_encoder=PromptEncoder(
                embed_dim=dim,
                image_embedding_size=(grid, grid),
                input_image_size=(image_size, image_size),
                mask_in_chans=dec["mask_in_chans"],
            ),
            mask_decoder=MaskDecoder(
                transformer_dim=dim,
                transformer=TwoWayTransformer(
                    depth=dec["decoder_depth"],
                    embedding_dim=dim,
                    num_heads=dec["decoder_num_heads"],
                    mlp_dim=dec["decoder_mlp_dim"],
                    attention_downsample_rate=dec["attention_downsample_rate"],
                    efficientsam_self_attention=dec["decoder_efficientsam_block"],
                ),
                num_multimask_outputs=dec["num_multimask_outputs"],
                iou_head_depth=dec["iou_head_depth"],
                iou_head_hidden_dim=dec["iou_head_hidden_dim"],
            ),
        )
    if checkpoint is not None:
        on_meta = device is not None and torch.device(device).type == "meta"
        load_checkpoint(sam, checkpoint, strict=True, hint=checkpoint_hint, assign=on_meta)
    return sam


def build_tiny_sam(**overrides) -> Sam:
    """A tiny SAM for tests: :data:`TINY_OVERRIDES` (64 px, embed 32, 2 blocks) updated with ``overrides``."""
    kwargs = {**TINY_OVERRIDES, **overrides}
    return build_sam_vit(kwargs.pop("preset", "vit_b"), **kwargs)
