"""Medical SAM Adapter network: parameter counts, equality with SAM (segment-anything reference) when every adapter's
output projection is zero, the depth branch's grouping, and SAM checkpoint loading with the rel-pos tables."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common.networks.msa import (
    DepthAttention,
    build_msa,
    clicks_from_map,
    closest_factors,
    load_sam_weights,
    upstream_factors,
)
from common.networks.sam import CheckpointError, Sam, build_sam_vit
from common.networks.sam.image_encoder import Attention

sam_ref = pytest.importorskip("segment_anything.modeling")  # tests/conftest.py installs the torchvision stand-in

# 64 px, 8x8 tokens, windows of 3 (padded to 9), one global block
TINY = dict(
    image_size=64,
    patch_size=8,
    embed_dim=32,
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


def zero_adapter_outputs(model):
    """Zero the image encoder's adapter up-projections (the decoder adapters are left as built: zero-initialised)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("image_encoder.") and ".adapters." in name and ".fc2." in name:
                p.zero_()


def test_published_counts():
    counts = {}
    for depth in (None, 96):
        model = build_msa(num_slices=depth, device="meta")
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        counts[depth] = (total, trainable)
        adapters = [m for n, m in model.named_modules() if n.endswith(("after_attn", "parallel_mlp"))]
        assert all(sum(p.numel() for p in a.parameters()) == 295_872 for a in adapters)
    assert counts[96] == (104_386_864, 14_709_732)  # spec B1: 3 adapters x 12 blocks + the whole mask decoder
    assert counts[None] == (100_836_400, 11_159_268)
    model = build_msa(num_slices=96, device="meta")
    assert all(not p.requires_grad for p in model.prompt_encoder.parameters())
    assert all(p.requires_grad for p in model.mask_decoder.parameters())


def test_decoder_adapter_counts():
    """The paper's decoder adapters (spec B1b): 3 per two-way block, ratio 0.25 of the 256-wide decoder; the
    prompt-conditioned one has the extra prompt down-projection. All train with the encoder adapters."""
    model = build_msa(num_slices=96, decoder_adapters=True, device="meta")
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert (total, trainable) == (104_386_864 + 231_424, 14_709_732 + 231_424)  # 14.3 % trainable
    for layer in model.mask_decoder.transformer.layers:
        sizes = {slot: sum(p.numel() for p in m.parameters()) for slot, m in layer.adapters.items()}
        assert sizes == {"after_token_to_image": 49_536, "parallel_mlp": 33_088, "after_image_to_token": 33_088}
        assert layer.adapter_scales["parallel_mlp"] == 0.5


def reference_from(model) -> torch.nn.Module:
    """segment-anything's Sam at TINY sizes, loaded with ``model``'s SAM weights (adapter keys left out)."""
    grid = TINY["image_size"] // TINY["patch_size"]
    ref = sam_ref.Sam(
        image_encoder=sam_ref.ImageEncoderViT(
            img_size=64,
            patch_size=8,
            embed_dim=32,
            depth=2,
            num_heads=2,
            window_size=3,
            global_attn_indexes=(1,),
            out_chans=16,
            qkv_bias=True,
            use_rel_pos=True,
            norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6),
        ),
        prompt_encoder=sam_ref.PromptEncoder(
            embed_dim=16, image_embedding_size=(grid, grid), input_image_size=(64, 64), mask_in_chans=4
        ),
        mask_decoder=sam_ref.MaskDecoder(
            transformer_dim=16,
            transformer=sam_ref.TwoWayTransformer(depth=2, embedding_dim=16, num_heads=2, mlp_dim=32),
            iou_head_hidden_dim=16,
        ),
    )
    state = {k: v for k, v in model.state_dict().items() if ".adapters." not in k}
    ref.load_state_dict(state, strict=True)
    return ref.eval()


@pytest.mark.parametrize("depth, decoder_adapters", [(None, False), (4, False), (4, True)])
def test_zeroed_adapters_equal_sam(depth, decoder_adapters):
    """With the encoder adapters' up-projections zeroed and the decoder adapters as built (zero-initialised), the
    network is SAM's."""
    torch.manual_seed(0)
    model = build_msa(num_slices=depth, decoder_adapters=decoder_adapters, **TINY).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "rel_pos" in name:
                p.normal_()  # informative rel-pos tables (SAM initialises them to zero)
    ref = reference_from(model)
    images = torch.randn(4, 3, 64, 64)
    points = torch.tensor([[[20.0, 30.0]]] * 4)
    labels = torch.ones(4, 1, dtype=torch.long)
    with torch.no_grad():
        assert (model.encode(images) - ref.image_encoder(images)).abs().max() > 1e-3  # adapters are live
        zero_adapter_outputs(model)
        ours = model.encode(images)
        theirs = ref.image_encoder(images)
        assert (ours - theirs).abs().max() <= 1e-4
        sparse, dense = ref.prompt_encoder(points=(points, labels), boxes=None, masks=None)
        per_image = [
            ref.mask_decoder(
                theirs[i : i + 1], ref.prompt_encoder.get_dense_pe(), sparse[i : i + 1], dense[i : i + 1], False
            )
            for i in range(4)
        ]  # the reference decodes one image
        ref_masks, ref_iou = (torch.cat(t) for t in zip(*per_image))
        masks, iou = Sam.forward(
            model, images, point_coords=points, point_labels=labels, multimask_output=False, return_iou=True
        )
    assert (masks - ref_masks).abs().max() <= 1e-4 and (iou - ref_iou).abs().max() <= 1e-4
    if decoder_adapters:  # and the decoder adapters are live once trained (here: random up-projections)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.startswith("mask_decoder.") and ".adapters." in name:
                    p.normal_(0, 0.5)
            moved = Sam.forward(model, images, point_coords=points, point_labels=labels)
        assert (moved - masks).abs().max() > 1e-3


def test_prompt_conditioned_adapter_reads_the_prompt_tokens():
    from common.networks.adapters import PromptConditionedAdapter

    torch.manual_seed(0)
    adapter = PromptConditionedAdapter(16, 0.25)
    x, prompt = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    with torch.no_grad():
        a, b = adapter(x, {"prompt_tokens": prompt}), adapter(x, {"prompt_tokens": prompt + 1})
        expected = x + adapter.fc2(torch.nn.functional.gelu(adapter.fc1(x) + adapter.prompt_fc(prompt)))
    torch.testing.assert_close(a, expected)
    assert (a - b).abs().max() > 1e-3  # conditioned on the prompt
    zero = PromptConditionedAdapter(16, 0.25, zero_init=True)
    torch.testing.assert_close(zero(x, {"prompt_tokens": prompt}), x)
    with pytest.raises(ValueError, match="prompt tokens"):
        adapter(x, {"prompt_tokens": prompt[:, :2]})


def test_closest_factors():
    assert closest_factors(96) == (8, 12) and closest_factors(7) == (1, 7) and closest_factors(16) == (4, 4)


def test_upstream_fold_differs_only_for_square_counts():
    """The released code's factor search (issue 13's table): square counts fold unevenly, 96 folds as ours; the
    published grouping uses it, the default does not."""
    upstream = {4: (1, 4), 9: (1, 9), 16: (2, 8), 36: (4, 9), 64: (4, 16), 96: (8, 12)}
    ours = {4: (2, 2), 9: (3, 3), 16: (4, 4), 36: (6, 6), 64: (8, 8), 96: (8, 12)}
    assert {n: upstream_factors(n) for n in upstream} == upstream
    assert {n: closest_factors(n) for n in ours} == ours
    non_square = [n for n in range(2, 200) if math.isqrt(n) ** 2 != n]
    assert all(upstream_factors(n) == closest_factors(n) for n in non_square)
    assert _depth_branch("published", 0).grid == (1, 4) and _depth_branch("per_token", 0).grid == (2, 2)


def _depth_branch(grouping: str, window_size: int) -> DepthAttention:
    torch.manual_seed(0)
    attn = Attention(8, num_heads=2, use_rel_pos=True, input_size=(3, 3))
    adapter = torch.nn.Linear(8, 8)
    return DepthAttention(attn, depth=4, adapter=adapter, grouping=grouping, window_size=window_size)


@pytest.mark.parametrize("grouping,window", [("per_token", 3), ("per_token", 0), ("published", 0)])
def test_depth_branch_mixes_one_token_across_slices(grouping, window):
    """Changing token (h, w) of one slice changes the branch output only at (h, w), in the volume's slices."""
    branch = _depth_branch(grouping, window)
    x = torch.randn(8, 6, 6, 8)  # 2 volumes x 4 slices of 6x6 tokens
    y = x.clone()
    y[1, 2, 4] += 1.0  # volume 0, slice 1, token (2, 4)
    with torch.no_grad():
        changed = (branch(x) - branch(y)).abs().sum(-1) > 1e-6
    assert changed.nonzero().tolist() == [[s, 2, 4] for s in range(4)]


def test_published_grouping_mixes_windows_in_window_blocks():
    branch = _depth_branch("published", 3)
    x = torch.randn(8, 6, 6, 8)  # 4 windows of 3x3 per slice: groups of 4 consecutive entries = 4 windows
    y = x.clone()
    y[1, 2, 4] += 1.0  # slice 1, window (0, 1), position (2, 1) in the window
    with torch.no_grad():
        changed = (branch(x) - branch(y)).abs().sum(-1) > 1e-6
    assert changed.nonzero().tolist() == [[1, 2, 1], [1, 2, 4], [1, 5, 1], [1, 5, 4]]  # one slice, every window


def test_load_sam_weights_keeps_rel_pos(tmp_path):
    torch.manual_seed(0)
    sam = build_sam_vit(**TINY)
    with torch.no_grad():
        for name, p in sam.named_parameters():
            if "rel_pos" in name:
                p.normal_()
    path = tmp_path / "sam.pth"
    torch.save(sam.state_dict(), path)
    model = build_msa(num_slices=4, **TINY)
    left = load_sam_weights(model, path)
    assert left and all(".adapters." in k for k in left)
    own = model.state_dict()
    for key in ("image_encoder.blocks.0.attn.rel_pos_h", "image_encoder.blocks.1.attn.rel_pos_w"):
        assert torch.equal(own[key], sam.state_dict()[key]) and own[key].abs().sum() > 0
    with pytest.raises(CheckpointError, match="missing"):
        load_sam_weights(model, {k: v for k, v in sam.state_dict().items() if "rel_pos" not in k})


def test_upstream_sam_key_skipping_is_an_option(tmp_path):
    """The released loader skips 32 of SAM ViT-B's 314 keys (rel-pos tables, decoder transformer MLPs); by default
    every SAM key loads, ``skip_like_upstream`` leaves exactly those at their initialisation."""
    from common.networks.msa import UPSTREAM_SKIPPED_SAM_KEYS

    with torch.device("meta"):
        full = build_sam_vit("vit_b").state_dict()
    skipped = [k for k in full if UPSTREAM_SKIPPED_SAM_KEYS.search(k)]
    assert (len(skipped), len(full)) == (32, 314)
    assert sum(".rel_pos_" in k for k in skipped) == 24
    torch.manual_seed(0)
    sam = build_sam_vit(**TINY)
    with torch.no_grad():
        for p in sam.parameters():
            p.normal_()
    model = build_msa(num_slices=4, **TINY)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    left = load_sam_weights(model, sam.state_dict(), skip_like_upstream=True)
    own, ref = model.state_dict(), sam.state_dict()
    tiny_skipped = {k for k in ref if UPSTREAM_SKIPPED_SAM_KEYS.search(k)}
    assert set(left) == tiny_skipped | {k for k in own if ".adapters." in k}
    assert all(torch.equal(own[k], initial[k]) for k in tiny_skipped)  # left at init, as upstream
    assert all(torch.equal(own[k], ref[k]) for k in ref if k not in tiny_skipped)
    default = build_msa(num_slices=4, **TINY)
    assert all(".adapters." in k for k in load_sam_weights(default, sam.state_dict()))


@pytest.mark.parametrize("pad_before_norm", [False, True])
def test_padded_tokens_enter_attention_as_the_layernorm_bias(pad_before_norm):
    """The released order pads the 5 x 5 grid to 6 x 6 before norm1: the padded tokens reach attention as norm1's
    bias; SAM's order pads after norm1: zeros."""
    from common.networks.sam.image_encoder import Block

    torch.manual_seed(0)
    block = Block(8, num_heads=2, window_size=3, pad_before_norm=pad_before_norm)
    with torch.no_grad():
        block.norm1.bias.normal_()
    seen = []
    block.attn.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        block(torch.randn(1, 5, 5, 8))
    windows = seen[0].reshape(1, 2, 2, 3, 3, 8).permute(0, 1, 3, 2, 4, 5).reshape(1, 6, 6, 8)  # back to the grid
    padded = torch.cat([windows[0, 5, :], windows[0, :5, 5]])  # the padded row and column
    expected = block.norm1.bias.expand_as(padded) if pad_before_norm else torch.zeros_like(padded)
    torch.testing.assert_close(padded, expected)


def test_every_flag_off_is_the_0_2_network():
    """All upstream flags and the decoder adapters off: the same keys and the same output as the defaults of
    build_msa (the network of bundle 0.2)."""
    torch.manual_seed(0)
    default = build_msa(num_slices=4, **TINY).eval()
    off = build_msa(
        num_slices=4, depth_grouping="per_token", decoder_adapters=False, pad_before_norm=False,
        decoder_efficientsam_block=False, **TINY,
    ).eval()  # fmt: skip
    off.load_state_dict(default.state_dict(), strict=True)
    x = torch.rand(4, 3, 64, 64)
    points, labels = torch.tensor([[[20.0, 30.0]]] * 4), torch.ones(4, 1, dtype=torch.long)
    with torch.no_grad():
        a = Sam.forward(default, x, point_coords=points, point_labels=labels)
        b = Sam.forward(off, x, point_coords=points, point_labels=labels)
    assert torch.equal(a, b) and default.state_dict().keys() == off.state_dict().keys()


@pytest.mark.parametrize("window, differs", [(3, True), (4, False)])
def test_pad_before_norm_changes_msa_only_where_windows_pad(window, differs):
    """The released block order (window padding before norm1, one core switch shared with SAMIHS) changes MSA's
    embedding when the 8 x 8 token grid is not a multiple of the window (3: padded), and nothing when it is (4)."""
    sizes = {**TINY, "window_size": window}
    torch.manual_seed(0)
    ours = build_msa(num_slices=4, **sizes)
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.2)
    upstream = build_msa(num_slices=4, pad_before_norm=True, **sizes)
    upstream.load_state_dict(ours.state_dict(), strict=True)
    x = torch.rand(4, 3, TINY["image_size"], TINY["image_size"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        gap = float((ours.image_encoder(x) - upstream.image_encoder(x)).abs().max())
    assert (gap > 1e-4) == differs, gap


def test_clicks_from_map():
    click_map = torch.zeros(2, 1, 6, 5, 3)
    click_map[0, 0, 4, 1, 0] = 1.0  # volume 0, slice 0: positive at x=4, y=1
    click_map[0, 0, 2, 3, 0] = -1.0  # and a negative
    click_map[1, 0, 0, 4, 2] = -1.0  # volume 1, slice 2: negative at x=0, y=4
    coords, labels = clicks_from_map(click_map)
    assert coords.shape == (6, 2, 2) and labels.shape == (6, 2)
    assert sorted(zip(coords[0].tolist(), labels[0].tolist())) == [([2.0, 3.0], 0), ([4.0, 1.0], 1)]
    assert labels[1].tolist() == [-1, -1] and labels[2].tolist() == [-1, -1]  # slices without clicks: padding
    assert coords[5, 0].tolist() == [0.0, 4.0] and labels[5].tolist() == [0, -1]


def test_volume_forward_equals_sam_slice_by_slice():
    """MSAVolume with zeroed adapters = the reference SAM on each slice (rows y, columns x), SAM-normalised, with the
    slice's clicks scaled from the slice to the encoder size, and the logits resized back."""
    torch.manual_seed(0)
    model = build_msa(num_slices=4, **TINY).eval()
    zero_adapter_outputs(model)
    ref = reference_from(model)
    volume = torch.rand(1, 1, 20, 16, 4)
    clicks = torch.zeros_like(volume)
    clicks[0, 0, 15, 3, 1] = 1.0
    clicks[0, 0, 2, 12, 3] = -1.0
    with torch.no_grad():
        out = model(volume, clicks)
        assert out.shape == (1, 1, 20, 16, 4)
        assert (out[..., [0, 2]] == -20.0).all()  # slices without a click stay background
        mean, std = torch.tensor([123.675, 116.28, 103.53]), torch.tensor([58.395, 57.12, 57.375])
        for k, click in [(1, ([15 * 64 / 20, 3 * 64 / 16], 1)), (3, ([2 * 64 / 20, 12 * 64 / 16], 0))]:
            sam_slice = torch.nn.functional.interpolate(
                volume[:, :, :, :, k].transpose(2, 3), size=(64, 64), mode="bilinear"
            ).expand(-1, 3, -1, -1)
            sam_slice = (sam_slice * 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
            sparse, dense = ref.prompt_encoder(
                points=(torch.tensor([[click[0]]]), torch.tensor([[click[1]]])), boxes=None, masks=None
            )
            low, _ = ref.mask_decoder(
                ref.image_encoder(sam_slice), ref.prompt_encoder.get_dense_pe(), sparse, dense, False
            )
            expected = torch.nn.functional.interpolate(low, size=(16, 20), mode="bilinear")[0, 0].T  # (X, Y)
            assert (out[0, 0, :, :, k] - expected).abs().max() <= 1e-4


def test_several_click_maps_share_one_encoding():
    """S click maps give the S logits of S separate calls, with one encoder pass per slice stack."""
    torch.manual_seed(0)
    model = build_msa(num_slices=4, **TINY).eval()
    volume = torch.rand(1, 1, 12, 10, 4)
    clicks = torch.zeros(1, 2, 12, 10, 4)
    clicks[0, 0, 3, 4, :] = 1.0
    clicks[0, 1, 8, 2, :] = 1.0
    clicks[0, 1, 1, 1, 2] = -1.0
    passes = []
    model.image_encoder.register_forward_hook(lambda m, args, out: passes.append(args[0].shape[0]))
    with torch.no_grad():
        joint = model(volume, clicks)
        separate = torch.cat([model(volume, clicks[:, s : s + 1]) for s in range(2)], dim=1)
    assert joint.shape == (1, 2, 12, 10, 4) and passes == [4, 4, 4]  # 4 slices encoded once per call
    assert (joint - separate).abs().max() <= 1e-5
    assert not torch.allclose(joint[:, 0], joint[:, 1])


def _in_released_layout(state: dict, patch: int, dim: int) -> dict:
    """A state dict renamed to the released code's 2024 names, written out independently of UPSTREAM_RENAMES, with
    the 1024 px position table it keeps (random, ``(1, 1024 // patch, 1024 // patch, dim)``)."""
    out = {}
    for key, value in state.items():
        key = key.replace(".adapters.after_attn.fc", ".Space_Adapter.D_fc")
        key = key.replace(".adapters.parallel_mlp.fc", ".MLP_Adapter.D_fc")
        key = key.replace(".adapters.parallel_attn.adapter.fc", ".Depth_Adapter.D_fc")
        key = key.replace(".attn.rel_pos_h", ".attn.rel_h").replace(".attn.rel_pos_w", ".attn.rel_w")
        if key.startswith("mask_decoder.transformer.layers."):
            key = key.replace(".mlp.lin1.", ".mlp.layers.0.0.").replace(".mlp.lin2.", ".mlp.fc.")
        out[f"module.{key}"] = value
    out["module.image_encoder.pos_embed"] = torch.randn(1, 1024 // patch, 1024 // patch, dim)
    return out


def test_released_training_checkpoint_converts_and_loads_strictly(tmp_path):
    """A file as the authors' train.py writes it (epoch, net name, state_dict with DDP prefix and the released
    names, optimizer state, a numpy best_tol, path_helper) converts into a strict-loading state dict; the position
    table is resized bicubically exactly as the released forward does; every other tensor arrives unchanged."""
    import torch.nn.functional as F

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    from convert_checkpoint import msa_published

    torch.manual_seed(0)
    source = build_msa(num_slices=4, **TINY)
    with torch.no_grad():
        for p in source.parameters():
            p.normal_(0, 0.1)
    released = _in_released_layout(source.state_dict(), TINY["patch_size"], TINY["embed_dim"])
    checkpoint = {
        "epoch": 7,
        "model": "sam",
        "state_dict": released,
        "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1e-4, "params": [0]}]},
        "best_tol": np.float64(0.8123),
        "path_helper": {"prefix": "logs/x", "ckpt_path": "logs/x/Model"},
    }
    path = tmp_path / "best_dice_checkpoint.pth"
    torch.save(checkpoint, path)
    out = msa_published(str(path), str(tmp_path / "models" / "model.pt"), num_slices=4, image_size=64,
                        **{k: v for k, v in TINY.items() if k != "image_size"})  # fmt: skip
    converted = torch.load(out, weights_only=True)
    table = released["module.image_encoder.pos_embed"].permute(0, 3, 1, 2)
    expected_table = F.interpolate(table, size=(8, 8), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    torch.testing.assert_close(converted["image_encoder.pos_embed"], expected_table)
    original = source.state_dict()
    assert converted.keys() == original.keys()
    assert all(torch.equal(converted[k], original[k]) for k in original if k != "image_encoder.pos_embed")
    with pytest.raises(CheckpointError):  # a wrong layout fails loudly
        msa_published(str(path), str(tmp_path / "other.pt"), num_slices=None, image_size=64,
                      **{k: v for k, v in TINY.items() if k != "image_size"})  # fmt: skip
    assert not (tmp_path / "other.pt").exists()


def test_depth_branch_pads_like_the_released_code_in_the_upstream_mode():
    """pad_before_norm + published grouping: the released code norms the zero-padded windows, so the depth branch's
    padded tokens are norm1's bias and, regrouped with real ones, change real tokens' outputs. Ours equals that
    procedure (the branch run on ``norm1(zero-padded grid)``, cropped) and differs from zero padding."""
    from common.networks.msa import DepthAttention
    from common.networks.sam.image_encoder import Block

    torch.manual_seed(0)
    block = Block(8, num_heads=2, window_size=3, pad_before_norm=True)
    with torch.no_grad():
        block.norm1.bias.normal_()
    adapter = nn.Linear(8, 8)
    ours = DepthAttention(block.attn, 4, adapter, "published", window_size=3, pad_norm=block.norm1)
    zero_padded = DepthAttention(block.attn, 4, adapter, "published", window_size=3)
    x = torch.randn(8, 5, 5, 8)  # 2 volumes of 4 slices, a 5 x 5 grid: windows of 3 pad it to 6 x 6
    with torch.no_grad():
        released = zero_padded(block.norm1(F.pad(x, (0, 0, 0, 1, 0, 1))))[:, :5, :5]  # a multiple: no more padding
        mine = ours(block.norm1(x))
        torch.testing.assert_close(mine, released)
        assert (mine - zero_padded(block.norm1(x))).abs().max() > 1e-3
