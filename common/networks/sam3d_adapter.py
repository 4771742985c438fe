"""3DSAM-adapter (Gong et al., arXiv 2306.13465): SAM ViT-B lifted to 3-D, point-prompted (spec: 3dsam_msa.md A).

* :class:`Sam3DAdapter` takes MONAI's ``(B, C, X, Y, Z)`` crops and ``[x, y, z]`` voxel points and runs the
  published network, whose own layout is ``(D, H, W) = (Z, Y, X)``: a file's array fed as stored therefore
  meets the model exactly as the published pipeline (which transposes MSD arrays to (D, H, W)) fed it.
* Trainable, as published: ``depth_embed``, ``slice_embed``, every block's ``norm1``/``norm2``/``adapter``, the
  new ``rel_pos_d`` and the 3-D necks (15,209,984), the used prompt encoder (3,164,160) and the decoder
  (7,088,256): 25,462,400 in all. SAM's patch conv, position table, attention, MLP and ``rel_pos_h/w`` are frozen.
* Weights: :func:`init_from_sam` maps an official SAM ViT-B checkpoint onto the encoder and sets
  ``rel_pos_d = (rel_pos_h + rel_pos_w) / 2``; :func:`published_state_dict` converts the authors' released
  training checkpoints (``encoder_dict`` / ``feature_dict`` / ``decoder_dict``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import cast

import torch
from torch import nn

from common.networks.sam import (
    SAM_VIT_B_HINT,
    CheckpointError,
    extract_state_dict,
    load_state_dict_file,
    torch_load_weights,
)
from common.networks.sam3d import Block3d, ImageEncoder3d, MultiLevelDecoder, VisualSamplerPromptEncoder

__all__ = [
    "SAM_VIT_B_HINT",
    "TINY_SIZES",
    "Sam3DAdapter",
    "build_sam3d_adapter",
    "freeze_published",
    "init_from_sam",
    "published_state_dict",
    "trainable_parameter_counts",
]

#: Small sizes for tests and smoke runs (16^3 crops, 4^3 tokens, 2^3 windows): ``build_sam3d_adapter(**TINY_SIZES)``.
TINY_SIZES = dict(
    roi_size=16,
    upsample=4,
    embed_dim=32,
    depth=4,
    num_heads=2,
    sam_grid=8,
    sam_window=3,
    global_attn_indexes=(1, 3),
    window=2,
    feature_dim=16,
    tap_blocks=(0, 1, 2, 3),
    prompt_heads=2,
    prompt_mlp_dim=32,
    num_global_queries=3,
    decoder_dim=8,
)

#: Encoder parameters that train (name prefixes / suffixes), as published.
_TRAINABLE_ENCODER = ("depth_embed", "slice_embed.", "neck_3d.")
_TRAINABLE_BLOCK_PARTS = (".norm1.", ".norm2.", ".adapter.", ".attn.rel_pos_d")


class Sam3DAdapter(nn.Module):
    """Image encoder, optional point prompt encoder, multi-level decoder.

    ``forward(image (B, C, R, R, R), points (B, N, 3) | None) -> logits (B, num_classes, R, R, R)``, with ``R``
    the encoder's ``roi_size``, ``C`` 1 (or the encoder's ``in_chans`` identical channels), and ``points`` voxel
    indices ``[x, y, z]`` of the crop (float allowed). Without a prompt encoder (automatic variant) no points are
    taken. Batch sizes above 1 work (published: 1).
    """

    def __init__(
        self,
        image_encoder: ImageEncoder3d,
        mask_decoder: MultiLevelDecoder,
        prompt_encoder: VisualSamplerPromptEncoder | None = None,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder

    @property
    def roi_size(self) -> int:
        return self.image_encoder.roi_size

    def forward(self, image: torch.Tensor, points: torch.Tensor | None = None) -> torch.Tensor:
        if self.prompt_encoder is not None and points is None:
            raise ValueError("this 3DSAM-adapter is promptable: pass points (B, N, 3) as [x, y, z] voxel indices")
        if self.prompt_encoder is None and points is not None:
            raise ValueError("this 3DSAM-adapter is the automatic (prompt-free) variant: it takes no points")
        image_dhw = image.permute(0, 1, 4, 3, 2)  # (B, C, X, Y, Z) -> published (B, C, D, H, W)
        features = self.image_encoder(image_dhw)
        if self.prompt_encoder is not None and points is not None:  # both or neither, checked above
            if points.ndim != 3 or points.shape[0] != image.shape[0] or points.shape[2] != 3:
                raise ValueError(f"points must be (B={image.shape[0]}, N, 3), got {tuple(points.shape)}")
            points_dwh = points.to(features[-1].dtype)[..., [2, 0, 1]]  # [x, y, z] -> published (d, w, h)
            features[-1] = self.prompt_encoder(features[-1], points_dwh, image_dhw.shape[2:])
        image_hwd = image[:, :1].permute(0, 1, 3, 2, 4)  # published decoder order (H, W, D) = (Y, X, Z)
        logits = self.mask_decoder(features, image_hwd.to(features[0].dtype))
        return logits.permute(0, 1, 3, 2, 4)  # (B, K, Y, X, Z) -> (B, K, X, Y, Z)


def freeze_published(model: Sam3DAdapter) -> Sam3DAdapter:
    """Apply the published trainable set (module docstring); prompt encoder and decoder stay trainable."""
    for name, p in model.image_encoder.named_parameters():
        block_part = name.startswith("blocks.") and any(s in f".{name}" for s in _TRAINABLE_BLOCK_PARTS)
        p.requires_grad_(name.startswith(_TRAINABLE_ENCODER) or block_part)
    return model


def trainable_parameter_counts(model: Sam3DAdapter) -> dict[str, int]:
    """Trainable parameters per part: ``{"image_encoder", "prompt_encoder", "mask_decoder", "total"}``."""
    counts = {
        part: sum(p.numel() for p in module.parameters() if p.requires_grad) if module is not None else 0
        for part, module in (
            ("image_encoder", model.image_encoder),
            ("prompt_encoder", model.prompt_encoder),
            ("mask_decoder", model.mask_decoder),
        )
    }
    counts["total"] = sum(counts.values())
    return counts


def build_sam3d_adapter(
    roi_size: int = 128,
    upsample: int = 4,
    promptable: bool = True,
    input_path: str = "fused",
    embed_dim: int = 768,
    depth: int = 12,
    num_heads: int = 12,
    sam_grid: int = 64,
    sam_window: int = 14,
    global_attn_indexes: Sequence[int] = (2, 5, 8, 11),
    window: int = 8,
    adapter_dim: int | None = None,
    feature_dim: int = 256,
    tap_blocks: Sequence[int] = (2, 5, 8, 11),
    prompt_depth: int = 2,
    prompt_heads: int = 8,
    prompt_mlp_dim: int = 2048,
    num_global_queries: int = 10,
    decoder_dim: int = 128,
    num_classes: int = 2,
    sam_checkpoint: str | os.PathLike | None = None,
) -> Sam3DAdapter:
    """The 3DSAM-adapter with the published trainable set; defaults are the published promptable model.

    The automatic variant is ``roi_size=256, upsample=2, promptable=False``. ``sam_checkpoint`` (an official
    SAM ViT-B file) initialises the encoder through :func:`init_from_sam`; tests pass tiny sizes.
    """
    encoder = ImageEncoder3d(
        roi_size=roi_size,
        upsample=upsample,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        sam_grid=sam_grid,
        sam_window=sam_window,
        global_attn_indexes=global_attn_indexes,
        window=window,
        adapter_dim=adapter_dim,
        out_chans=feature_dim,
        tap_blocks=tap_blocks,
        input_path=input_path,
    )
    prompt = (
        VisualSamplerPromptEncoder(feature_dim, prompt_depth, prompt_heads, prompt_mlp_dim, num_global_queries)
        if promptable
        else None
    )
    decoder = MultiLevelDecoder(feature_dim, decoder_dim, num_classes, head_scale=2)
    model = freeze_published(Sam3DAdapter(encoder, decoder, prompt))
    if sam_checkpoint is not None:
        init_from_sam(model, sam_checkpoint)
    return model


def _sam_encoder_keys(encoder: ImageEncoder3d) -> list[str]:
    """Encoder keys that come from SAM's ``image_encoder.*`` with the same names and shapes."""
    per_block = (
        "norm1.weight",
        "norm1.bias",
        "norm2.weight",
        "norm2.bias",
        "attn.qkv.weight",
        "attn.qkv.bias",
        "attn.proj.weight",
        "attn.proj.bias",
        "attn.rel_pos_h",
        "attn.rel_pos_w",
        "mlp.lin1.weight",
        "mlp.lin1.bias",
        "mlp.lin2.weight",
        "mlp.lin2.bias",
    )
    keys = ["patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed"]
    return keys + [f"blocks.{i}.{k}" for i in range(len(encoder.blocks)) for k in per_block]


def init_from_sam(model: Sam3DAdapter, sam: str | os.PathLike | Mapping) -> list[str]:
    """Copy SAM's encoder weights (official key layout, ``image_encoder.`` prefix optional) into ``model``.

    Copies the patch conv, ``pos_embed``, every block's norms, attention, MLP and ``rel_pos_h/w``; SAM's neck,
    prompt encoder and mask decoder are not used. Then ``rel_pos_d = (rel_pos_h + rel_pos_w) / 2``. Everything else
    keeps its initialisation. Returns the copied encoder keys; raises :class:`CheckpointError` for missing keys or
    shape mismatches (e.g. a ViT-L/H checkpoint: the published 3-D necks take ViT-B's 768 channels).
    """
    source = str(sam) if isinstance(sam, (str, os.PathLike)) else "<in-memory state dict>"
    state = (
        load_state_dict_file(sam, hint=SAM_VIT_B_HINT)
        if isinstance(sam, (str, os.PathLike))
        else extract_state_dict(sam, source)
    )
    if any(k.startswith("image_encoder.") for k in state):
        state = {k[len("image_encoder.") :]: v for k, v in state.items() if k.startswith("image_encoder.")}
    encoder = model.image_encoder
    own = encoder.state_dict()
    keys = _sam_encoder_keys(encoder)
    missing = [k for k in keys if k not in state]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in keys
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or mismatched:
        raise CheckpointError(
            f"{source} is not a SAM image encoder of this size: {len(missing)} missing key(s) "
            f"{missing[:4]}, {len(mismatched)} shape mismatch(es) {mismatched[:3]}"
        )
    with torch.no_grad():
        for k in keys:
            own[k].copy_(state[k])
        for block in encoder.blocks:
            attn = cast(Block3d, block).attn
            attn.rel_pos_d.copy_(0.5 * (attn.rel_pos_h + attn.rel_pos_w))
    return keys


def published_state_dict(checkpoint: str | os.PathLike | Mapping) -> dict[str, torch.Tensor]:
    """State dict for :class:`Sam3DAdapter` from the authors' released checkpoint (``last.pth.tar``/``best.pth.tar``).

    Takes ``encoder_dict`` (without the ``blocks.{i}.attn_mask`` buffers, rebuilt here), the prompt encoder that
    the published model uses (``feature_dict[3]``, the last level, without its unused
    ``positional_encoding_gaussian_matrix``) when present, and ``decoder_dict``; prefixes them with
    ``image_encoder.``, ``prompt_encoder.`` and ``mask_decoder.``. Load the result with ``strict=True``.
    """
    source = str(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "<in-memory checkpoint>"
    if isinstance(checkpoint, (str, os.PathLike)):
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"3DSAM-adapter checkpoint not found: {checkpoint}")
        checkpoint = torch_load_weights(checkpoint)  # the authors' files hold a numpy scalar (best_val_loss)
    if not isinstance(checkpoint, Mapping) or not {"encoder_dict", "decoder_dict"} <= set(checkpoint):
        found = sorted(checkpoint)[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise CheckpointError(
            f"{source}: not a released 3DSAM-adapter checkpoint (needs 'encoder_dict' and "
            f"'decoder_dict'; found {found})"
        )
    out = {f"image_encoder.{k}": v for k, v in checkpoint["encoder_dict"].items() if not k.endswith(".attn_mask")}
    out.update({k: v.reshape(()) for k, v in out.items() if k.endswith(".attn.lr") and v.numel() == 1})
    features = checkpoint.get("feature_dict")
    if features is not None:
        used = features[-1] if isinstance(features, Sequence) else features
        out.update({f"prompt_encoder.{k}": v for k, v in used.items() if k != "positional_encoding_gaussian_matrix"})
    out.update({f"mask_decoder.{k}": v for k, v in checkpoint["decoder_dict"].items()})
    return out
