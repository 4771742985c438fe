"""3DSAM-adapter network: exact parameter counts, fused vs literal input path, window attention vs dense
attention, axis conventions, module identities from the spec (3dsam_msa.md A15), checkpoint loading."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from workflow_utils import informative_positions  # tests/ is on sys.path (tests/conftest.py)

from common.networks.sam import CheckpointError
from common.networks.sam3d import ImageEncoder3d, MultiLevelDecoder, sample_point_features
from common.networks.sam3d.image_encoder import Block3d
from common.networks.sam3d_adapter import (
    TINY_SIZES,
    build_sam3d_adapter,
    init_from_sam,
    published_state_dict,
    trainable_parameter_counts,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

sam_ref = pytest.importorskip("segment_anything.modeling")  # tests/conftest.py installs the torchvision stand-in


def tiny(**overrides):
    torch.manual_seed(0)
    return build_sam3d_adapter(**{**TINY_SIZES, **overrides})


def test_published_parameter_counts():
    with torch.device("meta"):
        model = build_sam3d_adapter()
    counts = trainable_parameter_counts(model)
    assert counts == {
        "image_encoder": 15_209_984,
        "prompt_encoder": 3_164_160,
        "mask_decoder": 7_088_256,
        "total": 25_462_400,
    }
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert frozen == 88_846_604  # patch conv, SAM pos, qkv/proj/mlp, rel_pos_h/w, 12 lr scalars (spec A5)
    trainable_names = {
        n.split(".")[0] if not n.startswith("blocks.") else n.split(".", 2)[2]
        for n, p in model.image_encoder.named_parameters()
        if p.requires_grad
    }
    assert trainable_names == {
        "depth_embed",
        "slice_embed",
        "neck_3d",
        "norm1.weight",
        "norm1.bias",
        "norm2.weight",
        "norm2.bias",
        "adapter.linear1.weight",
        "adapter.linear1.bias",
        "adapter.conv.weight",
        "adapter.conv.bias",
        "adapter.linear2.weight",
        "adapter.linear2.bias",
        "attn.rel_pos_d",
    }


def test_automatic_variant_counts_and_shape():
    with torch.device("meta"):
        model = build_sam3d_adapter(roi_size=256, upsample=2, promptable=False)
    assert model.image_encoder.grid == 32
    assert trainable_parameter_counts(model)["total"] == 15_209_984 + 7_088_256
    out = tiny(roi_size=32, upsample=2, promptable=False)(torch.randn(1, 1, 32, 32, 32))
    assert out.shape == (1, 2, 32, 32, 32)


@pytest.mark.parametrize("roi_size,upsample,channels", [(16, 4, 1), (16, 4, 3), (32, 2, 1), (24, 4, 1)])
def test_fused_input_path_equals_literal(roi_size, upsample, channels):
    sizes = dict(roi_size=roi_size, upsample=upsample)
    if roi_size == 24:  # 6^3 tokens: windows of 3, a SAM grid of 12
        sizes.update(window=3, sam_grid=12)
    model = tiny(**sizes)
    enc = model.image_encoder
    with torch.no_grad():  # non-trivial biases and depth taps
        enc.slice_embed.bias.normal_()
        enc.patch_embed.proj.bias.normal_()
    x = torch.randn(2, channels, roi_size, roi_size, roi_size)
    fused = enc.embed_fused(x)
    literal = enc.embed_literal(x)
    assert fused.shape == literal.shape == (2, enc.grid, enc.grid, enc.grid, 32)
    assert (fused - literal).abs().max() <= 1e-4
    # the trainable depth taps get the same gradient through both paths
    grads = []
    for path in (enc.embed_fused, enc.embed_literal):
        enc.slice_embed.weight.grad = None
        (path(x) ** 2).sum().backward()
        grads.append(enc.slice_embed.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-3)
    assert enc.patch_embed.proj.weight.grad is None  # frozen and outside autograd, as published


def test_encoder_token_axes_follow_the_published_layout():
    """A voxel [x, y, z] of the MONAI crop lands in token (h', w', d') = (y, x, z) // 4 of the published grid."""
    enc = tiny().image_encoder
    x, y, z = 5, 9, 13  # each 1 mod 4: only one token's 6-voxel window reads it
    image = torch.zeros(1, 1, 16, 16, 16)
    image[0, 0, x, y, z] = 1.0
    image_dhw = image.permute(0, 1, 4, 3, 2)
    with torch.no_grad():
        delta = enc.embed_fused(image_dhw) - enc.embed_fused(torch.zeros_like(image_dhw))
    changed = (delta.abs().sum(-1) > 0).nonzero().tolist()
    assert changed == [[0, y // 4, x // 4, z // 4]]


def _dense_reference(block: Block3d, x: torch.Tensor) -> torch.Tensor:
    """Attention over all tokens of the grid at once, with the window/region structure as an explicit mask
    built from token coordinates (independent of the window partition code)."""
    g, w, s = x.shape[1], block.window, block.shift
    attn = block.attn
    coords = torch.tensor(list(itertools.product(range(g), repeat=3)))  # (N, 3) as (h, w, d), row-major
    rolled = (coords - s) % g
    same_window = ((rolled[:, None] // w) == (rolled[None] // w)).all(-1)
    region = (rolled >= g - w).long() + (rolled >= g - s).long() if s else torch.zeros_like(rolled)
    same_region = (region[:, None] == region[None]).all(-1)
    tokens = x.reshape(-1, x.shape[-1])
    qkv = attn.qkv(tokens).reshape(-1, 3, attn.num_heads, attn.head_dim).permute(1, 2, 0, 3)
    q, k, v = qkv.unbind(0)  # (heads, N, hd)
    offsets = rolled[:, None] - rolled[None] + w - 1  # (N, N, 3), valid inside a window
    bias = torch.zeros(attn.num_heads, len(coords), len(coords))
    for axis, table in enumerate((attn.rel_pos_h, attn.rel_pos_w, attn.rel_pos_d)):
        resized = F.interpolate(table.T[None], size=2 * w - 1, mode="linear")[0].T  # (2w-1, hd)
        r = resized[offsets[..., axis].clamp(0, 2 * w - 2)]  # (N, N, hd)
        bias += torch.einsum("nic,ijc->nij", q, r)
    scores = q @ k.transpose(1, 2) * attn.head_dim**-0.5 + attn.lr * bias
    scores = scores + torch.where(same_region, 0.0, -100.0)
    scores = scores.masked_fill(~same_window, float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(0, 1).reshape(len(coords), -1)
    return attn.proj(out).reshape(x.shape)


@pytest.mark.parametrize("shift", [0, 1, 2])
def test_window_attention_equals_dense_attention(shift):
    torch.manual_seed(0)
    block = Block3d(dim=16, num_heads=2, window=4 if shift == 2 else 2, shift=shift, table_size=5)
    grid = 8 if shift == 2 else 4
    with torch.no_grad():
        for t in (block.attn.rel_pos_h, block.attn.rel_pos_w, block.attn.rel_pos_d):
            t.normal_()
        block.attn.lr.fill_(0.7)
    from monai.networks.nets.swin_unetr import compute_mask

    w = block.window
    mask = compute_mask((grid,) * 3, (w,) * 3, (max(shift, 1),) * 3, None) if shift else None
    x = torch.randn(2, grid, grid, grid, 16)
    with torch.no_grad():
        dense = torch.cat([_dense_reference(block, x[i : i + 1]) for i in range(2)])
        block.attn.inference_chunk = 3  # 16 windows in chunks of 3: chunk borders cut through the shift mask
        chunked = block.attend(x, mask)
    ours = block.attend(x, mask)  # with autograd: all windows at once
    assert (ours - dense).abs().max() <= 1e-5
    assert (chunked - ours).abs().max() <= 1e-6


def test_adapter_with_zero_output_projection_is_identity():
    block = tiny().image_encoder.blocks[0]
    with torch.no_grad():
        block.adapter.linear2.weight.zero_()
        block.adapter.linear2.bias.zero_()
    x = torch.randn(1, 4, 4, 4, 32)
    assert torch.equal(block.adapter(x), x)


def test_prompt_encoder_reaches_the_image_only_through_global_queries():
    model = tiny()
    pe = model.prompt_encoder
    feats = torch.randn(1, 16, 4, 4, 4)
    pts_a, pts_b = torch.rand(1, 5, 3) * 15, torch.rand(1, 2, 3) * 15
    with torch.no_grad():
        assert not torch.allclose(pe(feats, pts_a, (16, 16, 16)), pe(feats, pts_b, (16, 16, 16)))
        for layer in pe.transformer.layers:
            layer.cross_attn_image_to_token.out_proj.weight.zero_()
            layer.cross_attn_image_to_token.out_proj.bias.zero_()
        out_a, out_b = pe(feats, pts_a, (16, 16, 16)), pe(feats, pts_b, (16, 16, 16))
    tokens = feats.flatten(2).transpose(1, 2)
    layers = pe.transformer.layers
    expected = layers[1].norm4(layers[0].norm4(tokens)).transpose(1, 2).reshape(feats.shape)
    assert torch.allclose(out_a, out_b) and torch.allclose(out_a, expected, atol=1e-6)


def test_point_sampling_axes():
    """Point (d, w, h) of a 16^3 crop samples the (h', w', d') = (h, w, d) // 4 token of a 4^3 feature grid."""
    h_, w_, d_ = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), torch.arange(4.0), indexing="ij")
    feats = (100 * h_ + 10 * w_ + d_)[None, None]  # (1, 1, H', W', D')
    points = torch.tensor([[[4 * 3 + 1.5, 4 * 1 + 1.5, 4 * 2 + 1.5]]])  # token centre: d'=3, w'=1, h'=2
    assert sample_point_features(feats, points, (16, 16, 16)).item() == pytest.approx(213.0)


def test_model_points_are_xyz_of_the_monai_crop():
    """Sam3DAdapter hands [x, y, z] to the prompt encoder as (d, w, h) = (z, x, y) of the published layout."""
    model = tiny()
    seen = {}
    model.prompt_encoder.register_forward_pre_hook(lambda m, args: seen.update(points=args[1], size=args[2]))
    model(torch.randn(1, 1, 16, 16, 16), torch.tensor([[[1.0, 2.0, 3.0]]]))
    assert seen["points"].tolist() == [[[3.0, 1.0, 2.0]]] and tuple(seen["size"]) == (16, 16, 16)


def test_decoder_image_resize_is_average_pooling():
    dec = MultiLevelDecoder(in_ch=4, mid_ch=2)
    image = torch.randn(1, 1, 16, 16, 16)
    seen = {}
    dec.cls.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    out = dec([torch.randn(1, 4, 4, 4, 4)] * 4, image)
    assert out.shape == (1, 2, 16, 16, 16)
    assert torch.allclose(seen["x"][:, -1:], F.avg_pool3d(image, 2), atol=1e-6)


def test_end_to_end_shape_batch_and_errors():
    model = tiny()
    image, points = torch.randn(2, 1, 16, 16, 16), torch.rand(2, 4, 3) * 15
    out = model(image, points)
    assert out.shape == (2, 2, 16, 16, 16)
    with torch.no_grad():  # the memory-saving paths without autograd (chunked attention and MLP) give the same
        model.image_encoder.blocks[0].attn.inference_chunk = 5
        assert (model(image, points) - out).abs().max() <= 1e-5
    assert torch.allclose(out[1:], model(image[1:], points[1:]), atol=1e-5)  # batch items are independent
    with pytest.raises(ValueError, match="promptable"):
        model(image)
    with pytest.raises(ValueError, match=r"\(B, 1 or 3, 16, 16, 16\)"):
        model(torch.randn(1, 1, 16, 16, 12), points[:1])
    with pytest.raises(ValueError, match="multiple of the window"):
        ImageEncoder3d(
            roi_size=24, upsample=4, embed_dim=8, depth=1, num_heads=1, sam_grid=12, window=4, tap_blocks=(0,)
        )


def _reference_sam_state(**sizes) -> dict:
    """An official-layout SAM state dict from segment-anything's modules (random weights)."""
    enc = sam_ref.ImageEncoderViT(
        norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6), use_rel_pos=True, qkv_bias=True, **sizes
    )
    state = {f"image_encoder.{k}": v for k, v in enc.state_dict().items()}
    state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.randn(2, 8)
    return state


def test_init_from_sam_checkpoint_layout():
    torch.manual_seed(1)
    state = informative_positions(
        _reference_sam_state(
            img_size=128,
            patch_size=16,
            embed_dim=32,
            depth=4,
            num_heads=2,
            window_size=3,
            global_attn_indexes=(1, 3),
            out_chans=16,
        )
    )
    model = tiny()
    copied = init_from_sam(model, state)
    own = model.image_encoder.state_dict()
    assert len(copied) == 3 + 4 * 14
    for k in copied:
        assert torch.equal(own[k], state[f"image_encoder.{k}"]), k
    for i in range(4):
        h, w = own[f"blocks.{i}.attn.rel_pos_h"], own[f"blocks.{i}.attn.rel_pos_w"]
        assert torch.equal(own[f"blocks.{i}.attn.rel_pos_d"], 0.5 * (h + w))
    assert model.image_encoder.blocks[1].attn.rel_pos_h.shape == (15, 16)  # global block: 2 * 8 - 1 rows
    with pytest.raises(CheckpointError, match="shape mismatch"):
        init_from_sam(tiny(sam_window=4), state)


@pytest.mark.slow
def test_init_from_full_size_sam_vit_b(tmp_path):
    ref = sam_ref.ImageEncoderViT(
        depth=12,
        embed_dim=768,
        img_size=1024,
        mlp_ratio=4,
        num_heads=12,
        patch_size=16,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=(2, 5, 8, 11),
        window_size=14,
        out_chans=256,
        norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6),
    )
    path = tmp_path / "sam_vit_b.pth"
    torch.save({f"image_encoder.{k}": v for k, v in ref.state_dict().items()}, path)
    del ref
    model = build_sam3d_adapter(sam_checkpoint=path)
    sam = torch.load(path, weights_only=True)
    own = model.image_encoder.state_dict()
    for k in ("patch_embed.proj.weight", "pos_embed", "blocks.11.attn.rel_pos_h", "blocks.0.mlp.lin2.bias"):
        assert torch.equal(own[k], sam[f"image_encoder.{k}"])
    assert own["blocks.2.attn.rel_pos_d"].shape == (127, 64) and own["blocks.0.attn.rel_pos_d"].shape == (27, 64)


class PicklesCode:
    """An object whose unpickling would run code (a stand-in for what weights-only loading must refuse)."""


def test_published_checkpoint_format_loads_strictly(tmp_path):
    source = tiny()
    encoder = dict(source.image_encoder.state_dict())
    for i in range(0, 4, 2):  # the published model stores its shift masks
        encoder[f"blocks.{i}.attn_mask"] = torch.zeros(8, 8, 8)
    prompt = dict(source.prompt_encoder.state_dict(), positional_encoding_gaussian_matrix=torch.randn(3, 8))
    others = [tiny().prompt_encoder.state_dict() for _ in range(3)]
    released = {
        "epoch": 499,
        "best_val_loss": np.float64(0.4),  # train.py stores a numpy scalar: weights-only loading must accept it
        "encoder_dict": encoder,
        "feature_dict": others + [prompt],
        "decoder_dict": source.mask_decoder.state_dict(),
        "encoder_opt": {"state": {}, "param_groups": []},
    }
    path = tmp_path / "last.pth.tar"
    torch.save(released, path)
    target = tiny()
    target.load_state_dict(published_state_dict(path), strict=True)
    image, points = torch.randn(1, 1, 16, 16, 16), torch.rand(1, 3, 3) * 15
    with torch.no_grad():
        assert torch.equal(target(image, points), source(image, points))
    with pytest.raises(CheckpointError, match="encoder_dict"):
        published_state_dict({"model": {}})
    # anything beyond numpy scalars still refuses to unpickle, as the project's error naming the file
    torch.save({**released, "path_helper": {"hook": PicklesCode()}}, tmp_path / "code.pth.tar")
    with pytest.raises(CheckpointError, match="code.pth.tar: refused: loading it would run code"):
        published_state_dict(tmp_path / "code.pth.tar")

    # the conversion tool writes a plain state dict that the bundle's CheckpointLoader can load strictly
    from convert_checkpoint import sam3d_published

    out = sam3d_published(str(path), str(tmp_path / "models" / "model.pt"), **TINY_SIZES)
    converted = torch.load(out, weights_only=True)
    assert converted.keys() == target.state_dict().keys()
    assert all(torch.equal(converted[k], v) for k, v in target.state_dict().items())
