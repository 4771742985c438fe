"""SAMIHS (Wang et al., arXiv 2311.08190, ISBI 2024): SAM ViT-B with parameter-refactoring (PR) adapters
(spec: samus_hq_samihs_medsam.md section 3, samus_samihs_polyp_addendum.md 3.3).

In every block (window and global), on the SAM core's slots::

    before_attn  PRAdapter: xn + xn W_a diag(R) W_a_up + B    (on norm1's output, feeding attention)
    before_mlp   PRAdapter: xn + xn W_m diag(R) W_m_up + B    (on norm2's output, feeding the MLP)

``W_a``, ``W_m`` (768 x 100, Xavier) are shared by all blocks and owned by the encoder (``shared.pr``); each adapter
has its own rescale ``R`` (1 x 100) and bias ``B`` (768), both zero at init, so the network starts as SAM. The
published code ties the up-projection to the down-projection's transpose (``W_up = W^T``); ``tie_up_projection=False``
adds separate shared up-projections. No non-linearity: after training the adapters fold into the frozen weights
(:func:`fold_pr_adapters`, the "refactoring"), giving a plain SAM.

Trainable as published: the adapters and shared projections (174,432), the whole prompt encoder (6,220) and mask
decoder (4,058,340): **4,238,992 of 93,909,904**. Input: grey [0, 1] at 1024 px (``"unit"``), repeated to 3
channels. ``pad_before_norm=True`` reproduces the published block order (window padding before ``norm1``), which
is not SAM's (default) and not numerically neutral.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import nullcontext
from typing import cast

import torch
from torch import nn

from common.networks.sam import (
    SAM_VIT_B_HINT,
    Block,
    GreySam,
    ImageEncoderViT,
    build_sam_vit,
    extract_state_dict,
    load_leaving_new_modules,
    load_state_dict_file,
)

__all__ = [
    "PR_BOTTLENECK",
    "SAM_VIT_B_HINT",
    "TINY_SIZES",
    "PRAdapter",
    "PRProjections",
    "Samihs",
    "build_samihs",
    "fold_pr_adapters",
    "load_sam_weights",
    "new_module_keys",
    "set_trainable",
]

#: The published adapter width (hard-coded ``adapter_dim`` upstream).
PR_BOTTLENECK = 100
#: Adapter position -> (block slot, the layer its output feeds).
POSITIONS = {"att": "before_attn", "mlp": "before_mlp"}

#: Small sizes for tests and smoke runs (64 px, 8 px patches -> 8 x 8 tokens, window 3 with padding, 2 blocks).
TINY_SIZES: dict = dict(
    image_size=64,
    patch_size=8,
    embed_dim=32,
    depth=2,
    num_heads=2,
    window_size=3,
    global_attn_indexes=(1,),
    bottleneck=8,
    prompt_embed_dim=16,
    mask_in_chans=4,
    decoder_num_heads=2,
    decoder_mlp_dim=32,
    iou_head_hidden_dim=16,
)


class PRProjections(nn.Module):
    """The shared projections: ``att_down_projection``, ``mlp_down_projection`` ``(dim, bottleneck)``, Xavier
    uniform; with ``tie_up_projection=False`` also ``att_up_projection``, ``mlp_up_projection``
    ``(bottleneck, dim)`` (Xavier), else the up-projection is the down-projection's transpose (published)."""

    def __init__(self, dim: int = 768, bottleneck: int = PR_BOTTLENECK, tie_up_projection: bool = True) -> None:
        super().__init__()
        self.tie_up_projection = tie_up_projection
        for position in POSITIONS:
            down = nn.Parameter(torch.empty(dim, bottleneck))
            nn.init.xavier_uniform_(down)
            self.register_parameter(f"{position}_down_projection", down)
            if not tie_up_projection:
                up = nn.Parameter(torch.empty(bottleneck, dim))
                nn.init.xavier_uniform_(up)
                self.register_parameter(f"{position}_up_projection", up)

    def down(self, position: str) -> torch.Tensor:
        return getattr(self, f"{position}_down_projection")

    def up(self, position: str) -> torch.Tensor:
        return self.down(position).t() if self.tie_up_projection else getattr(self, f"{position}_up_projection")

    def matrix(self, position: str, rescale: torch.Tensor) -> torch.Tensor:
        """``W diag(R) W_up`` ``(dim, dim)``: what an adapter adds to the identity."""
        return (self.down(position) * rescale) @ self.up(position)


class PRAdapter(nn.Module):
    """``x + x W diag(R) W_up + B`` on the last axis: ``(..., dim) -> (..., dim)``. ``R`` (``adapter_rescale``,
    ``(1, bottleneck)``) and ``B`` (``adapter_bias``, ``(dim,)``) are this adapter's, zero at init; ``W``/``W_up``
    come from ``projections`` (shared, not owned: no state-dict keys here for them)."""

    projections: PRProjections  # set with object.__setattr__ in __init__

    def __init__(self, projections: PRProjections, position: str, dim: int, bottleneck: int) -> None:
        super().__init__()
        if position not in POSITIONS:
            raise ValueError(f"position must be one of {sorted(POSITIONS)}, got {position!r}")
        object.__setattr__(self, "projections", projections)  # owned by the encoder's `shared`
        self.position = position
        self.adapter_rescale = nn.Parameter(torch.zeros(1, bottleneck))
        self.adapter_bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        down = self.projections.down(self.position) * self.adapter_rescale
        return x + (x @ down) @ self.projections.up(self.position) + self.adapter_bias


class Samihs(GreySam):
    """SAMIHS: :class:`~common.networks.sam.GreySam` (grey [0, 1] input, ``use_boxes``) with PR adapters."""


def build_samihs(
    image_size: int = 1024,
    bottleneck: int = PR_BOTTLENECK,
    tie_up_projection: bool = True,
    pad_before_norm: bool = False,
    use_boxes: bool = True,
    preset: str = "vit_b",
    device: str | torch.device | None = None,
    **overrides,
) -> Samihs:
    """SAMIHS at ``image_size`` px with the published trainable set. ``overrides``: any :func:`build_sam_vit` size
    (:data:`TINY_SIZES` for tests); ``device="meta"`` builds without memory."""
    with torch.device(device) if device is not None else nullcontext():
        sam = build_sam_vit(preset, image_size=image_size, pad_before_norm=pad_before_norm, **overrides)
        enc = cast(ImageEncoderViT, sam.image_encoder)
        projections = PRProjections(enc.embed_dim, bottleneck, tie_up_projection)
        enc.shared["pr"] = projections
        for position, slot in POSITIONS.items():
            adapters = [PRAdapter(projections, position, enc.embed_dim, bottleneck) for _ in enc.blocks]
            enc.set_adapters(slot, adapters.__getitem__)
        model = Samihs(enc, sam.prompt_encoder, sam.mask_decoder, use_boxes=use_boxes)
    return set_trainable(model)


def _is_new(name: str) -> bool:
    return name.startswith("image_encoder.shared.") or ".adapters." in name


def set_trainable(model: Samihs) -> Samihs:
    """Published trainable set: PR adapters, shared projections, prompt encoder, mask decoder."""
    for name, p in model.named_parameters():
        p.requires_grad_(_is_new(name) or name.startswith(("prompt_encoder.", "mask_decoder.")))
    return model


def new_module_keys(model: Samihs) -> list[str]:
    """State-dict keys SAMIHS adds to SAM (adapters and shared projections)."""
    return [k for k in model.state_dict() if _is_new(k)]


def load_sam_weights(model: Samihs, sam: str | os.PathLike | Mapping) -> list[str]:
    """Initialise from an official SAM checkpoint: every SAM key loads (upstream loads non-strictly); raises unless
    the keys left at their initialisation are exactly the adapters' and projections'. Returns those keys."""
    if isinstance(sam, (str, os.PathLike)):
        state = load_state_dict_file(sam, hint=SAM_VIT_B_HINT)
    else:
        state = extract_state_dict(dict(sam))
    expected = new_module_keys(model)
    load_leaving_new_modules(model, state, expected, "SAM checkpoint")
    return expected


@torch.no_grad()
def fold_pr_adapters(model: Samihs) -> dict[str, torch.Tensor]:
    """The refactoring: a plain SAM state dict (official key layout, no adapter keys) computing what ``model`` does.

    Per block, with ``M = W diag(R) W_up`` and ``xn`` a LayerNorm output:

    * MLP adapter: ``lin1(xn (I + M) + B)`` -> ``lin1.weight @ (I + M)^T`` and ``lin1.bias + lin1.weight @ B``;
    * attention adapter: ``qkv(xn (I + M) + B)`` -> ``qkv.weight @ (I + M)^T``, with ``B`` moved into ``norm1.bias``
      as ``B (I + M)^-1`` rather than into the qkv bias, so zero-padded window tokens (SAM's order pads after the
      norm) still enter attention as zeros; exact in both block orders.

    Folded in float64; the result loads strictly into :func:`build_sam_vit` at the same sizes (keep
    ``pad_before_norm`` as trained).
    """
    enc = cast(ImageEncoderViT, model.image_encoder)
    projections = cast(PRProjections, enc.shared["pr"])
    state = {k: v.clone() for k, v in model.state_dict().items() if not _is_new(k)}
    for i in range(len(enc.blocks)):
        block: Block = enc.block(i)
        prefix = f"image_encoder.blocks.{i}."
        for position, slot in POSITIONS.items():
            adapter = cast(PRAdapter, block.get_adapter(slot))
            m = projections.matrix(position, adapter.adapter_rescale).double()
            eye_m = torch.eye(m.shape[0], dtype=torch.float64) + m
            bias = adapter.adapter_bias.double()
            if position == "mlp":
                w, b = block.mlp.lin1.weight.double(), block.mlp.lin1.bias.double()
                state[prefix + "mlp.lin1.weight"] = (w @ eye_m.t()).to(block.mlp.lin1.weight)
                state[prefix + "mlp.lin1.bias"] = (b + w @ bias).to(block.mlp.lin1.bias)
            else:
                w = block.attn.qkv.weight.double()
                state[prefix + "attn.qkv.weight"] = (w @ eye_m.t()).to(block.attn.qkv.weight)
                shift = torch.linalg.solve(eye_m.t(), bias)  # B (I + M)^-1 as a row vector
                state[prefix + "norm1.bias"] = (block.norm1.bias.double() + shift).to(block.norm1.bias)
    return state
