"""segment-anything reference models at tiny sizes, with the same random weights as ours (shared by unit tests)."""

from __future__ import annotations

from functools import partial

import torch
from segment_anything import modeling as sam_ref  # conftest.py installs the torchvision stand-in first
from torch import nn

from common.networks.sam import VIT_PRESETS, build_sam_vit

ATOL = 1e-4

# name -> (image_size, overrides); every size differs from SAM's, and most configurations pad windows.
TINY_CONFIGS = {
    "no_pad": (64, dict(embed_dim=32, depth=2, num_heads=2, window_size=4, global_attn_indexes=(1,))),
    "pad_10_to_12": (
        80,
        dict(patch_size=8, embed_dim=48, depth=3, num_heads=4, window_size=4, global_attn_indexes=(1,), mlp_ratio=2.0),
    ),
    "pad_7_to_9_all_windowed": (
        56,
        dict(patch_size=8, embed_dim=24, depth=2, num_heads=3, window_size=3, global_attn_indexes=()),
    ),
}
DECODER = dict(
    prompt_embed_dim=32,
    mask_in_chans=8,
    decoder_depth=2,
    decoder_num_heads=2,
    decoder_mlp_dim=48,
    iou_head_hidden_dim=24,
)


def reference_image_encoder(image_size: int, overrides: dict, out_chans: int) -> nn.Module:
    """segment-anything's ``ImageEncoderViT``: ViT-B with ``overrides``, rel-pos on (as in every published SAM)."""
    enc = {**VIT_PRESETS["vit_b"], **overrides}
    return sam_ref.ImageEncoderViT(
        img_size=image_size,
        patch_size=enc["patch_size"],
        embed_dim=enc["embed_dim"],
        depth=enc["depth"],
        num_heads=enc["num_heads"],
        mlp_ratio=enc["mlp_ratio"],
        out_chans=out_chans,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=enc["window_size"],
        global_attn_indexes=tuple(enc["global_attn_indexes"]),
        use_abs_pos=enc.get("use_abs_pos", True),
    )


def reference_sam(image_size: int, overrides: dict, decoder: dict = DECODER):
    """segment-anything's modules at the sizes given (rel-pos on, as in every published SAM)."""
    dim = decoder["prompt_embed_dim"]
    grid = image_size // {**VIT_PRESETS["vit_b"], **overrides}["patch_size"]
    return sam_ref.Sam(
        image_encoder=reference_image_encoder(image_size, overrides, dim),
        prompt_encoder=sam_ref.PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=decoder["mask_in_chans"],
        ),
        mask_decoder=sam_ref.MaskDecoder(
            num_multimask_outputs=3,
            transformer=sam_ref.TwoWayTransformer(
                depth=decoder["decoder_depth"],
                embedding_dim=dim,
                mlp_dim=decoder["decoder_mlp_dim"],
                num_heads=decoder["decoder_num_heads"],
            ),
            transformer_dim=dim,
            iou_head_depth=3,
            iou_head_hidden_dim=decoder["iou_head_hidden_dim"],
        ),
    )


def randomise_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Perturb every parameter (rel-pos tables and pos-embed are zeros at init, so they get large values)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "rel_pos" in name or "pos_embed" in name:
                p.copy_(0.5 * noise)
            else:
                p.add_(0.05 * noise)
    return model


def tiny_pair(name: str):
    size, ov = TINY_CONFIGS[name]
    torch.manual_seed(0)
    ref = randomise_(reference_sam(size, ov).eval())
    ours = build_sam_vit("vit_b", image_size=size, **ov, **DECODER).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours, size


def prompt_cases(batch: int, size: int, n_points: int = 3, mask_hw: int | None = None):
    g = torch.Generator().manual_seed(1)
    coords = torch.rand(batch, n_points, 2, generator=g) * (size - 1)
    labels = torch.randint(0, 2, (batch, n_points), generator=g)
    labels[:, -1] = -1  # an explicit padding point
    xy0 = torch.rand(batch, 2, generator=g) * size / 2
    boxes = torch.cat([xy0, xy0 + size / 3], dim=1)
    cases = {
        "points": dict(points=(coords, labels)),
        "box": dict(boxes=boxes),
        "box_b14": dict(boxes=boxes[:, None, :]),
        "points_box": dict(points=(coords, labels), boxes=boxes),
    }
    if mask_hw is not None:
        masks = torch.randn(batch, 1, mask_hw, mask_hw, generator=g)
        cases["points_mask"] = dict(points=(coords, labels), masks=masks)
        cases["mask"] = dict(masks=masks)
    return cases


def sam_shaped_for_samus(samus_sizes: dict):
    """Our SAM (random) whose encoder fits a SAMUS of ``samus_sizes`` as SAM ViT-B fits SAMUS at 256 px: the patch
    kernel as patch size and an image of ``pos_embed_grid`` patches (so the position table has SAMUS's size)."""
    skip = ("image_size", "patch_kernel", "patch_stride", "cnn_channels", "pos_embed_grid")
    sizes = {k: v for k, v in samus_sizes.items() if k not in skip}
    kernel = samus_sizes["patch_kernel"]
    return build_sam_vit(image_size=samus_sizes["pos_embed_grid"] * kernel, patch_size=kernel, **sizes)
