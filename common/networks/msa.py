"""Medical SAM Adapter (MSA / Med-SA, Wu et al., arXiv 2304.12620): SAM with bottleneck adapters (spec: 3dsam_msa.md B).

Per encoder block (``common.networks.sam`` adapter slots):

* ``after_attn``: the space adapter, ``a + fc2(gelu(fc1(a)))`` on the attention output (768 -> 192 -> 768);
* ``parallel_mlp``: the MLP adapter, ``fc2(gelu(fc1(x)))`` parallel to the MLP, scaled by 0.5;
* ``parallel_attn`` (3-D only): :class:`DepthAttention`, the block's own frozen attention applied along the slice
  axis, followed by a depth adapter without skip.

Default init (no zero init), as published. Trainable, as published: the encoder adapters and the whole mask decoder
(the prompt encoder runs without gradients upstream). ViT-B: adapters 295,872 each; 2-D 7,100,928 (two per block),
3-D 10,651,392 (three); trainable 11,159,268 (2-D) / 14,709,732 (3-D) of 100,836,400 / 104,386,864. The paper's
"2%" does not match the published code, which trains 14.1%.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import TypeVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from common.networks.adapters import Adapter, PromptConditionedAdapter
from common.networks.sam import (
    SAM_VIT_B_HINT,
    CheckpointError,
    Sam,
    build_sam_vit,
    extract_state_dict,
    load_checkpoint,
    load_state_dict_file,
)
from common.networks.sam.image_encoder import Attention, Block, ImageEncoderViT, window_partition, window_unpartition
from common.networks.sam.transformer import TwoWayAttentionBlock, TwoWayTransformer
from common.transforms.sam_input import normalise_pixels, slices_to_volume, stretch_scale, stretch_to, volume_to_slices

__all__ = [
    "DEPTH_GROUPINGS",
    "TINY_SIZES",
    "SAM_VIT_B_HINT",
    "DepthAttention",
    "MSAVolume",
    "build_msa",
    "clicks_from_map",
    "closest_factors",
    "UPSTREAM_SKIPPED_SAM_KEYS",
    "add_decoder_adapters",
    "from_upstream_checkpoint",
    "upstream_factors",
    "load_sam_weights",
    "msa_trainable",
]

ADAPTER_RATIO = 0.25
MLP_ADAPTER_SCALE = 0.5
#: ``"per_token"``: each spatial token attends over the slices (the method as described; correct in every block).
#: ``"published"``: the released code's grouping, which in window blocks regroups (slice, window) pairs instead.
DEPTH_GROUPINGS = ("per_token", "published")


def closest_factors(n: int) -> tuple[int, int]:
    """``(a, b)`` with ``a * b == n`` and ``a <= b`` as close as possible (96 -> (8, 12)): the 2-D grid the slices
    are folded into so that SAM's 2-D attention (and its rel-pos tables) can run along depth."""
    a = math.isqrt(n)
    while n % a:
        a -= 1
    return a, n // a


def upstream_factors(n: int) -> tuple[int, int]:
    """The released code's fold of ``n`` slices: a two-pointer search from ``(isqrt(n), isqrt(n) + 1)`` that never
    tries the square root itself, so square counts fold unevenly (4 -> (1, 4), 16 -> (2, 8), 64 -> (4, 16)); equal to
    :func:`closest_factors` elsewhere, e.g. the published 96 -> (8, 12)."""
    a, b = math.isqrt(n), math.isqrt(n) + 1
    while a * b != n:
        if a * b < n:
            b += 1
        else:
            a -= 1
    return a, b


class DepthAttention(nn.Module):
    """Depth branch of MSA's 3-D mode: ``(B * D, H, W, C)`` normed slice tokens -> ``(B * D, H, W, C)``.

    The ``D = depth`` slices of each volume are consecutive in the batch. ``"per_token"`` grouping: for each spatial
    token, its ``D`` values form a sequence, folded into a :func:`closest_factors` grid and passed through
    ``attention`` (the block's frozen SAM attention, shared, not owned: it adds no state-dict keys), then through
    ``adapter``. ``"published"`` grouping reproduces the released code in window blocks (``window_size > 0``):
    the windowed batch axis, ordered (slice, window), is split into groups of ``D`` consecutive entries, which mixes
    windows and slices (in global blocks both groupings are the same), and ``D`` is folded by
    :func:`upstream_factors` instead of :func:`closest_factors` (they differ for square counts only).
    ``pad_norm`` (the block's ``norm1`` when it pads before norm): the released code builds the depth branch's windows
    from the zero-padded grid and norms them, so in ``"published"`` grouping the padded tokens enter the depth
    attention as ``pad_norm(0)``, the LayerNorm bias, and share sequences with real tokens; without it they are zeros.
    """

    attention: Attention  # set with object.__setattr__ in __init__
    pad_norm: nn.LayerNorm | None

    def __init__(
        self,
        attention: Attention,
        depth: int,
        adapter: nn.Module,
        grouping: str = "per_token",
        window_size: int = 0,
        pad_norm: nn.LayerNorm | None = None,
    ) -> None:
        super().__init__()
        if grouping not in DEPTH_GROUPINGS:
            raise ValueError(f"grouping must be one of {DEPTH_GROUPINGS}, got {grouping!r}")
        if depth < 2:
            raise ValueError(f"the depth branch needs at least 2 slices per volume, got depth={depth}")
        object.__setattr__(self, "attention", attention)  # shared with the block: not a submodule
        object.__setattr__(self, "pad_norm", pad_norm)  # likewise
        self.adapter = adapter
        self.depth, self.grouping, self.window_size = depth, grouping, window_size
        self.grid = upstream_factors(depth) if grouping == "published" else closest_factors(depth)

    def _along_depth(self, seq: torch.Tensor) -> torch.Tensor:
        """``(N, D, C)`` sequences -> attention on the folded ``(N, dh, dw, C)`` grid -> adapter -> ``(N, D, C)``."""
        n, d, c = seq.shape
        return self.adapter(self.attention(seq.reshape(n, *self.grid, c))).reshape(n, d, c)

    def _padded_like_upstream(self, xn: torch.Tensor) -> torch.Tensor:
        """``(N, H, W, C)`` -> ``(N, Hp, Wp, C)``, a multiple of the window, padded with ``pad_norm(0)``."""
        n, h, w, c = xn.shape
        ws = self.window_size
        hp, wp = h + (ws - h % ws) % ws, w + (ws - w % ws) % ws
        if (hp, wp) == (h, w):
            return xn
        assert self.pad_norm is not None
        grid = self.pad_norm(xn.new_zeros(c)).expand(n, hp, wp, c).clone()
        grid[:, :h, :w] = xn
        return grid

    def forward(self, xn: torch.Tensor) -> torch.Tensor:
        bd, h, w, c = xn.shape
        d = self.depth
        if bd % d:
            raise ValueError(f"the depth branch takes stacks of {d} slices: batch of {bd} slices is not a multiple")
        if self.grouping == "published" and self.window_size > 0:
            grid = self._padded_like_upstream(xn) if self.pad_norm is not None else xn
            windows, pad_hw = window_partition(grid, self.window_size)  # (B * D * nW, ws, ws, C), (slice, window)
            nwd, ws = windows.shape[0], self.window_size
            seq = windows.reshape(nwd // d, d, ws * ws, c).transpose(1, 2).reshape(-1, d, c)
            out = self._along_depth(seq).reshape(nwd // d, ws * ws, d, c).transpose(1, 2)
            return window_unpartition(out.reshape(nwd, ws, ws, c), ws, pad_hw, (h, w))
        seq = xn.reshape(bd // d, d, h * w, c).transpose(1, 2).reshape(-1, d, c)
        out = self._along_depth(seq).reshape(bd // d, h * w, d, c).transpose(1, 2)
        return out.reshape(bd, h, w, c)


#: MSA feeds SAM's ImageNet normalisation of the [0, 1] CT window times 255 (``common.transforms.sam_input``).
PIXEL_CONVENTION = "imagenet"
#: Logit given to slices without any click (background, sigmoid ~ 2e-9): MSA segments the slices it is prompted on.
NO_CLICK_LOGIT = -20.0
#: Small sizes for tests and smoke runs (64 px slices, 8 px patches, 2 blocks): ``build_msa(**TINY_SIZES)``.
TINY_SIZES = dict(
    image_size=64,
    patch_size=8,
    embed_dim=32,
    depth=2,
    num_heads=2,
    window_size=3,
    global_attn_indexes=[1],
    prompt_embed_dim=16,
    mask_in_chans=4,
    decoder_num_heads=2,
    decoder_mlp_dim=32,
    iou_head_hidden_dim=16,
)


def clicks_from_map(click_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-slice SAM points from a click map ``(B, 1, X, Y, Z)`` (> 0 positive click, < 0 negative, 0 none).

    Returns ``coords (B * Z, P, 2)`` as SAM's ``(x, y)`` = our ``(axis 0, axis 1)`` voxel indices and ``labels
    (B * Z, P)`` (1 / 0, and -1 for padding), slices ordered (volume, z); ``P`` is the most clicks on any slice
    (at least 1, so a slice without clicks gets only a padding point).
    """
    b, _, x, y, z = click_map.shape
    slices = click_map[:, 0].permute(0, 3, 1, 2).reshape(b * z, x, y)
    found = [torch.nonzero(s) for s in slices]
    p = max(1, max(len(f) for f in found))
    coords = click_map.new_zeros(b * z, p, 2, dtype=torch.float32)
    labels = torch.full((b * z, p), -1, dtype=torch.long, device=click_map.device)
    for i, (s, f) in enumerate(zip(slices, found)):
        coords[i, : len(f)] = f.float()
        labels[i, : len(f)] = (s[f[:, 0], f[:, 1]] > 0).long()
    return coords, labels


class MSAVolume(Sam):
    """MSA on volumes: ``forward(image (B, 1, X, Y, Z) in [0, 1], condition (B, S, X, Y, Z) click maps)`` ->
    logits ``(B, S, X, Y, Z)``, one channel per click map (one structure each; training uses ``S = 1``).

    Each axial slice ``image[b, 0, :, :, k]`` becomes a SAM image (rows along y, columns along x, 3 channels),
    resized to ``image_size`` (bilinear) and normalised as SAM expects (x 255, ImageNet mean/std): the rules of
    :mod:`common.transforms.sam_input` (:func:`~common.transforms.sam_input.stretch_to`, ``"imagenet"``). It is encoded
    once for all ``S`` click maps; each map's clicks on that slice (:func:`clicks_from_map`) are scaled to
    ``image_size`` as SAM scales coordinates (the published code leaves them at crop scale: fixed here). The
    single-mask logits (``4 * image_size / patch``) are resized back to the slice (bilinear); slices without a click
    get :data:`NO_CLICK_LOGIT` everywhere (training and evaluation click every slice). With a depth branch, ``Z``
    must equal its ``num_slices``. The click maps travel with the image through MONAI's spatial transforms and
    sliding windows. State dict: SAM's layout plus the adapters.
    """

    # Volumes and click maps instead of Sam's 2-D images and prompts: a different call by design.
    def forward(self, image: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if (
            image.ndim != 5
            or image.shape[1] != 1
            or condition.ndim != 5
            or condition.shape[0] != image.shape[0]
            or condition.shape[2:] != image.shape[2:]
        ):
            raise ValueError(
                f"MSAVolume expects image (B, 1, X, Y, Z) and click maps (B, S, X, Y, Z), got "
                f"{tuple(image.shape)} and {tuple(condition.shape)}"
            )
        b, _, x, y, z = image.shape
        size = self.image_size
        slices = stretch_to(volume_to_slices(image), size).expand(-1, 3, -1, -1)  # SAM slices: rows y, columns x
        embeddings = self.encode(normalise_pixels(slices, PIXEL_CONVENTION))
        scale = stretch_scale((x, y), size, device=image.device)
        out = []
        for s in range(condition.shape[1]):
            coords, labels = clicks_from_map(condition[:, s : s + 1])
            low_res, _ = self.decode(embeddings, point_coords=coords * scale, point_labels=labels)
            logits = stretch_to(low_res, (y, x))  # (B * Z, 1, Y, X)
            logits = logits.masked_fill(~(labels >= 0).any(1)[:, None, None, None], NO_CLICK_LOGIT)
            out.append(slices_to_volume(logits, b)[:, 0])
        return torch.stack(out, dim=1)


SamT = TypeVar("SamT", bound=Sam)


def msa_trainable(model: SamT) -> SamT:
    """Published trainable set: encoder adapters and the mask decoder; everything else frozen."""
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("mask_decoder.") or ".adapters." in name)
    return model


def add_decoder_adapters(model: Sam) -> Sam:
    """The paper's three adapters in every two-way transformer block of the mask decoder (spec 3dsam_msa.md B1b), on
    the core's decoder slots, each the encoder's bottleneck (ratio 0.25, GELU) with a zero-initialised up-projection,
    so the decoder starts as SAM's:

    * ``after_token_to_image``: :class:`~common.networks.adapters.PromptConditionedAdapter` on the cross-attention
      output (the block's prompt tokens, down-projected, join the bottleneck before the non-linearity);
    * ``parallel_mlp``: parallel to the token MLP, x 0.5, as the encoder's MLP adapter;
    * ``after_image_to_token``: on the image stream's residual sum, with its own skip, before ``norm4`` (residual +
      LayerNorm).

    SAM ViT-B's decoder (2 blocks, 256 wide): 231,424 parameters, trainable with the other adapters."""
    for layer in cast(TwoWayTransformer, model.mask_decoder.transformer).layers:
        block = cast(TwoWayAttentionBlock, layer)
        dim = block.cross_attn_token_to_image.embedding_dim
        with torch.device(block.norm1.weight.device):
            prompted = PromptConditionedAdapter(dim, ADAPTER_RATIO, nn.GELU, zero_init=True)
            mlp = Adapter(dim, ADAPTER_RATIO, nn.GELU, skip=False, zero_init=True)
            image_stream = Adapter(dim, ADAPTER_RATIO, nn.GELU, skip=True, zero_init=True)
        block.set_adapter("after_token_to_image", prompted)
        block.set_adapter("parallel_mlp", mlp, scale=MLP_ADAPTER_SCALE)
        block.set_adapter("after_image_to_token", image_stream)
    return model


def build_msa(
    image_size: int = 1024,
    num_slices: int | None = None,
    depth_grouping: str = "per_token",
    decoder_adapters: bool = False,
    preset: str = "vit_b",
    **overrides,
) -> MSAVolume:
    """MSA on SAM (``preset`` at ``image_size`` px, ``overrides`` as :func:`build_sam_vit`).

    ``num_slices``: slices per volume for the 3-D mode (published ``chunk``, 96); ``None`` builds the 2-D model
    without a depth branch. ``depth_grouping``: see :class:`DepthAttention` (default the correct per-token grouping).
    ``decoder_adapters``: the paper's decoder adapters (:func:`add_decoder_adapters`; the bundle turns them on; the
    released code has none).
    """
    built = build_sam_vit(preset, image_size=image_size, **overrides)
    sam = MSAVolume(built.image_encoder, built.prompt_encoder, built.mask_decoder)
    enc = cast(ImageEncoderViT, sam.image_encoder)  # build_sam_vit builds a ViT encoder
    dim = enc.embed_dim
    enc.set_adapters("after_attn", lambda i: Adapter(dim, ADAPTER_RATIO, nn.GELU, skip=True))
    enc.set_adapters(
        "parallel_mlp", lambda i: Adapter(dim, ADAPTER_RATIO, nn.GELU, skip=False), scale=MLP_ADAPTER_SCALE
    )
    if num_slices is not None:

        def depth_branch(i: int) -> DepthAttention:
            block = cast(Block, enc.blocks[i])
            adapter = Adapter(dim, ADAPTER_RATIO, nn.GELU, skip=False)
            pad_norm = block.norm1 if block.pad_before_norm else None
            return DepthAttention(block.attn, num_slices, adapter, depth_grouping, block.window_size, pad_norm)

        enc.set_adapters("parallel_attn", depth_branch)
    if decoder_adapters:
        add_decoder_adapters(sam)
    return msa_trainable(sam)


#: SAM keys the released loader silently skips (since its 2024 renaming): every relative-position table and the
#: decoder transformer's MLPs (32 of SAM ViT-B's 314 keys), which therefore start from random initialisation there.
UPSTREAM_SKIPPED_SAM_KEYS = re.compile(
    r"(\.attn\.rel_pos_[hw]$|^mask_decoder\.transformer\.layers\.\d+\.mlp\.lin[12]\.)"
)


def load_sam_weights(model: Sam, sam: str | os.PathLike | Mapping, skip_like_upstream: bool = False) -> list[str]:
    """Load an official SAM checkpoint into an MSA model: every SAM key must load (relative-position tables
    included, which the published loader drops after its 2024 renaming); only adapter keys may stay at their
    initialisation. ``skip_like_upstream``: leave :data:`UPSTREAM_SKIPPED_SAM_KEYS` at their initialisation as the
    released loader does (for faithful retraining). Returns the keys left at initialisation; raises
    :class:`CheckpointError` when anything else is missing or unexpected."""
    state = load_state_dict_file(sam) if isinstance(sam, (str, os.PathLike)) else extract_state_dict(dict(sam))
    if skip_like_upstream:
        state = {k: v for k, v in state.items() if not UPSTREAM_SKIPPED_SAM_KEYS.search(k)}
    missing, unexpected = load_checkpoint(model, state, strict=False)
    skipped = (lambda k: bool(UPSTREAM_SKIPPED_SAM_KEYS.search(k))) if skip_like_upstream else (lambda k: False)
    wrong = [k for k in missing if ".adapters." not in k and not skipped(k)]
    if wrong or unexpected:
        raise CheckpointError(
            f"SAM checkpoint does not fit this MSA model: missing {wrong[:5]}, unexpected {list(unexpected)[:5]}"
        )
    return list(missing)


#: The released code's state-dict names (2024 and later) -> this package's, as (pattern, replacement) pairs.
UPSTREAM_RENAMES = (
    (re.compile(r"\.Space_Adapter\.D_fc([12])\."), r".adapters.after_attn.fc\1."),
    (re.compile(r"\.MLP_Adapter\.D_fc([12])\."), r".adapters.parallel_mlp.fc\1."),
    (re.compile(r"\.Depth_Adapter\.D_fc([12])\."), r".adapters.parallel_attn.adapter.fc\1."),
    (re.compile(r"\.attn\.rel_([hw])$"), r".attn.rel_pos_\1"),  # renamed in 2024; SAM's names kept here
    (re.compile(r"^(mask_decoder\.transformer\.layers\.\d+\.mlp)\.layers\.0\.0\."), r"\1.lin1."),  # EfficientSAM MLP
    (re.compile(r"^(mask_decoder\.transformer\.layers\.\d+\.mlp)\.fc\."), r"\1.lin2."),
)


def from_upstream_checkpoint(checkpoint: str | os.PathLike | Mapping, model: MSAVolume) -> dict[str, torch.Tensor]:
    """The state dict of a training checkpoint written by the released code (``{'epoch', 'model', 'state_dict',
    'optimizer', 'best_tol', 'path_helper'}``; ``module.`` stripped) in this package's names (:data:`UPSTREAM_RENAMES`)
    for ``model``. The released encoder keeps a 1024 px ``pos_embed`` table and resizes it bicubically
    (``align_corners=False``) to the token grid on every forward; it is resized here once, the same way, to
    ``model``'s grid. Load the result with ``strict=True``."""
    if isinstance(checkpoint, (str, os.PathLike)):
        state = load_state_dict_file(checkpoint)
    else:
        state = extract_state_dict(dict(checkpoint))
    out = {}
    for key, value in state.items():
        for pattern, replacement in UPSTREAM_RENAMES:
            key = pattern.sub(replacement, key)
        out[key] = value
    target = model.state_dict().get("image_encoder.pos_embed")
    table = out.get("image_encoder.pos_embed")
    if target is not None and table is not None and table.shape != target.shape:
        grid = tuple(target.shape[1:3])
        resized = F.interpolate(table.permute(0, 3, 1, 2).float(), size=grid, mode="bicubic", align_corners=False)
        out["image_encoder.pos_embed"] = resized.permute(0, 2, 3, 1).to(table.dtype)
    return out
