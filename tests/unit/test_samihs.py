"""SAMIHS network and loss: exact published counts, zero PR adapters equal to segment-anything in SAM's order, the
published block order (padding before norm1) against a reference on segment-anything's modules and its measurable
difference, SAM loading that refuses checkpoints that do not fit, the folding of trained adapters into a plain
SAM, and the boundary-sensitive loss against its closed forms."""

from __future__ import annotations

import re
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from segment_anything.modeling import image_encoder as ref_encoder
from torch import nn

from common.losses import BoundaryDoUBCELoss, BoundaryDoULoss, boundary_and_area
from common.networks import samihs
from common.networks.sam import CheckpointError, build_sam_vit
from tests.sam_reference import randomise_

TINY = samihs.TINY_SIZES
SAM_SIZES = {k: v for k, v in TINY.items() if k not in ("image_size", "bottleneck")}
GRID = TINY["image_size"] // TINY["patch_size"]  # 8 tokens, window 3: windows pad 8 -> 9


def _count(model, trainable=None):
    return sum(p.numel() for p in model.parameters() if trainable is None or p.requires_grad == trainable)


def _random_adapters(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adapter" in name or "projection" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def test_published_parameter_counts_and_trainable_set():
    model = samihs.build_samihs(device="meta")
    assert (_count(model, True), _count(model)) == (4_238_992, 93_909_904)
    new = sum(p.numel() for n, p in model.named_parameters() if n in set(samihs.new_module_keys(model)))
    assert new == 174_432  # 2 x 768 x 100 shared + 24 x (100 + 768)
    frozen = {n.split(".")[0] for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"image_encoder"}  # prompt encoder and mask decoder train, as published
    untied = samihs.build_samihs(tie_up_projection=False, device="meta")
    assert _count(untied, True) == 4_238_992 + 2 * 768 * 100


def _reference_encoder(pad_before_norm: bool):
    """segment-anything's encoder; in the published order its window blocks pad before norm1 (a re-statement of
    upstream's Block.forward from the spec, on segment-anything's window functions and modules)."""
    enc = ref_encoder.ImageEncoderViT(
        img_size=TINY["image_size"],
        patch_size=TINY["patch_size"],
        embed_dim=TINY["embed_dim"],
        depth=TINY["depth"],
        num_heads=TINY["num_heads"],
        out_chans=TINY["prompt_embed_dim"],
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=TINY["window_size"],
        global_attn_indexes=TINY["global_attn_indexes"],
    )
    if pad_before_norm:

        def published_forward(self, x):
            shortcut = x
            if self.window_size > 0:
                h, w = x.shape[1], x.shape[2]
                x, pad_hw = ref_encoder.window_partition(x, self.window_size)
            x = self.attn(self.norm1(x))
            if self.window_size > 0:
                x = ref_encoder.window_unpartition(x, self.window_size, pad_hw, (h, w))
            x = shortcut + x
            return x + self.mlp(self.norm2(x))

        for blk in enc.blocks:
            blk.forward = published_forward.__get__(blk)
    return enc


@pytest.mark.parametrize("pad_before_norm", [False, True], ids=["sam_order", "published_order"])
def test_zero_adapters_equal_segment_anything_in_either_order(pad_before_norm):
    torch.manual_seed(0)
    model = randomise_(samihs.build_samihs(pad_before_norm=pad_before_norm, **TINY)).eval()
    with torch.no_grad():  # R = 0, B = 0 as initialised; the shared projections stay random (they are not zero)
        for name, p in model.named_parameters():
            if "adapter_" in name:
                p.zero_()
    ref = _reference_encoder(pad_before_norm).eval()
    ref.load_state_dict(
        {k: v for k, v in model.image_encoder.state_dict().items() if not samihs._is_new("image_encoder." + k)}
    )
    images = torch.rand(2, 1, TINY["image_size"], TINY["image_size"])
    with torch.no_grad():
        torch.testing.assert_close(model.encode(images), ref(images.expand(-1, 3, -1, -1)), atol=1e-5, rtol=1e-4)


def test_published_block_order_is_not_numerically_neutral():
    torch.manual_seed(1)
    sam_order = randomise_(samihs.build_samihs(**TINY)).eval()
    published = samihs.build_samihs(pad_before_norm=True, **TINY).eval()
    published.load_state_dict(sam_order.state_dict())
    images = torch.rand(1, 1, TINY["image_size"], TINY["image_size"])
    with torch.no_grad():
        a, b = sam_order.encode(images), published.encode(images)
    relative = float((a - b).norm() / a.norm())
    assert relative > 1e-3, relative  # padded tokens enter attention as the LayerNorm bias instead of zeros


def test_pr_adapter_is_the_linear_map_of_the_spec():
    proj = samihs.PRProjections(6, 3)
    adapter = samihs.PRAdapter(proj, "att", 6, 3)
    x = torch.randn(4, 6)
    torch.testing.assert_close(adapter(x), x)  # identity at init
    with torch.no_grad():
        adapter.adapter_rescale.copy_(torch.tensor([[0.5, -1.0, 2.0]]))
        adapter.adapter_bias.copy_(torch.arange(6.0))
    w = proj.att_down_projection
    expected = x + x @ w @ torch.diag(torch.tensor([0.5, -1.0, 2.0])) @ w.t() + torch.arange(6.0)
    torch.testing.assert_close(adapter(x), expected)
    assert not any(k.endswith("projection") for k in adapter.state_dict())  # shared, owned by the encoder


def tiny_sam_checkpoint(seed: int = 2) -> dict:
    """A random SAM state dict in the official layout at the sizes of the tiny SAMIHS (shared with the bundle tests)."""
    torch.manual_seed(seed)
    return randomise_(build_sam_vit(image_size=TINY["image_size"], **SAM_SIZES)).state_dict()


def test_sam_loading_leaves_exactly_the_new_keys():
    model = samihs.build_samihs(**TINY)
    state = tiny_sam_checkpoint()
    left = samihs.load_sam_weights(model, state)
    assert set(left) == set(samihs.new_module_keys(model))
    assert {k.split(".")[1] for k in left} == {"shared", "blocks"}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    del state["mask_decoder.iou_token.weight"]
    with pytest.raises(CheckpointError, match="missing non-new keys"):
        samihs.load_sam_weights(samihs.build_samihs(**TINY), state)


@pytest.mark.parametrize("pad_before_norm", [False, True], ids=["sam_order", "published_order"])
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_folded_adapters_give_a_plain_sam_with_the_same_output(pad_before_norm, tie):
    torch.manual_seed(3)
    model = _random_adapters(
        randomise_(samihs.build_samihs(pad_before_norm=pad_before_norm, tie_up_projection=tie, **TINY))
    )
    model.eval()
    folded = samihs.fold_pr_adapters(model)
    plain = build_sam_vit(image_size=TINY["image_size"], pad_before_norm=pad_before_norm, **SAM_SIZES).eval()
    plain.load_state_dict(folded, strict=True)  # no adapter keys left: SAM's layout
    images = torch.rand(2, 1, TINY["image_size"], TINY["image_size"])
    points = dict(
        point_coords=torch.tensor([[[20.0, 30.0]], [[5.0, 50.0]]]), point_labels=torch.ones(2, 1, dtype=torch.long)
    )
    with torch.no_grad():
        torch.testing.assert_close(
            plain(images.expand(-1, 3, -1, -1), **points), model(images, **points), atol=1e-4, rtol=1e-4
        )
        assert not torch.allclose(model.encode(images), samihs.build_samihs(**TINY).encode(images))


# ---------------------------------------------------------------------------------------------------------- loss
def test_boundary_and_area_counts_over_the_batch():
    g = torch.zeros(2, 1, 6, 6)
    g[0, 0, 1:4, 1:4] = 1  # 3 x 3 square: 8 boundary pixels, 9 area
    g[1, 0, 0:2, 0:6] = 1  # a band on the border: every pixel touches the border or background
    t_c, t_s = boundary_and_area(g)
    assert (t_c.item(), t_s.item()) == (8 + 12, 9 + 12)


def _bd(p_binary: torch.Tensor, g: torch.Tensor) -> float:
    big = torch.where(p_binary > 0, 40.0, -40.0)  # sigmoid -> exactly 0 / 1 in float32
    return float(BoundaryDoULoss()(big, g))


def test_boundary_dou_matches_the_dice_like_closed_form():
    g = torch.zeros(1, 1, 12, 12)
    g[0, 0, 2:8, 3:9] = 1  # 6 x 6: t_c 20, t_s 36 -> beta 20/36
    p = torch.zeros_like(g)
    p[0, 0, 3:9, 3:10] = 1
    tp = float((p * g).sum())
    fp, fn = float((p * (1 - g)).sum()), float(((1 - p) * g).sum())
    beta = 20 / 36
    assert _bd(p, g) == pytest.approx(1 - 2 * beta * tp / (2 * beta * tp + fp + fn), rel=1e-4)


def test_truncation_floors_beta_at_a_tenth():
    g = torch.zeros(1, 1, 64, 64)
    g[0, 0, 2:62, 2:62] = 1  # 60 x 60: t_c / t_s = 236 / 3600 < 0.1
    t_c, t_s = boundary_and_area(g)
    assert t_c / t_s < 0.1
    p = torch.zeros_like(g)
    p[0, 0, 10:62, 2:62] = 1
    tp, fn = float((p * g).sum()), float(((1 - p) * g).sum())
    assert _bd(p, g) == pytest.approx(1 - 2 * 0.1 * tp / (2 * 0.1 * tp + fn), rel=1e-4)


def test_soft_form_and_total_loss():
    torch.manual_seed(4)
    logits = torch.randn(2, 1, 8, 8)
    g = (torch.rand(2, 1, 8, 8) > 0.6).float()
    t_c, t_s = boundary_and_area(g)
    alpha = min(2 * (1 - (t_c + 1e-5) / (t_s + 1e-5)) - 1, torch.tensor(0.8))
    p = torch.sigmoid(logits)
    i, y, z = (p * g).sum(), (g * g).sum(), (p * p).sum()
    expected = (z + y - 2 * i + 1e-5) / (z + y - (1 + alpha) * i + 1e-5)
    torch.testing.assert_close(BoundaryDoULoss()(logits, g), expected)
    bce = F.binary_cross_entropy_with_logits(logits, g, pos_weight=torch.tensor(2.0))
    torch.testing.assert_close(BoundaryDoUBCELoss()(logits, g), 0.5 * bce + 0.5 * expected)
    empty = BoundaryDoUBCELoss()(logits, torch.zeros_like(g))
    assert torch.isfinite(empty)


def test_fold_tool_writes_a_plain_sam_checkpoint(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    from fold_pr_adapters import fold

    torch.manual_seed(5)
    model = _random_adapters(randomise_(samihs.build_samihs(**TINY)))
    torch.save(model.state_dict(), tmp_path / "model.pt")
    diff = fold(str(tmp_path / "model.pt"), str(tmp_path / "out" / "sam.pt"), check=True, **TINY)
    assert diff is not None and diff < 1e-4
    folded = torch.load(tmp_path / "out" / "sam.pt", weights_only=True)
    build_sam_vit(image_size=TINY["image_size"], **SAM_SIZES).load_state_dict(folded, strict=True)


def test_slice_preprocessing_is_the_published_chain_and_inference_uses_it():
    """SliceToModeld (train/evaluate configs) and slice_to_model (volume inference) both equal the published chain
    written out with MONAI transforms: percentile clip, bilinear resize, min-max; SAM layout for inference."""
    from monai.transforms import ClipIntensityPercentilesd, Compose, ScaleIntensityd

    from common.methods.samihs import SliceToModeld, slice_to_model
    from common.methods.samus.frames import ResizeFramed
    from common.transforms.sam_input import ToSamLayoutd

    ct = torch.randn(40, 30, generator=torch.Generator().manual_seed(0)) * 300 + 40  # (X, Y) in HU
    pipeline = Compose(
        [
            ClipIntensityPercentilesd("image", lower=0.05, upper=99.5),
            ResizeFramed("image", 64, "bilinear"),
            ScaleIntensityd("image", minv=0.0, maxv=1.0),
            ToSamLayoutd("image"),
        ]
    )
    expected = torch.as_tensor(pipeline({"image": ct[None]})["image"])
    got = slice_to_model(ct, 64)
    assert got.shape == (1, 1, 64, 64) and float(got.min()) == 0.0 and float(got.max()) == 1.0
    torch.testing.assert_close(got[0], expected)
    in_config = ToSamLayoutd("image")(SliceToModeld("image", 64)({"image": ct[None]}))["image"]
    torch.testing.assert_close(torch.as_tensor(in_config), expected)


def test_brain_window_keeps_hounsfield_meaning():
    """window="brain" maps 0..80 HU to 0..1 (no per-slice min-max): a 40 HU slice is 0.5 everywhere, air and bone
    clip to 0 and 1, and the same HU gives the same value on two slices with different ranges."""
    from common.methods.samihs import SliceToModeld, slice_to_model

    flat = torch.full((32, 32), 40.0)
    assert torch.allclose(slice_to_model(flat, 16, window="brain"), torch.full((1, 1, 16, 16), 0.5))
    a = torch.full((32, 32), 20.0)
    a[:4] = -1000.0  # air
    b = torch.full((32, 32), 20.0)
    b[:4] = 1500.0  # bone
    out_a, out_b = slice_to_model(a, 32, window="brain"), slice_to_model(b, 32, window="brain")
    assert float(out_a[0, 0, 16, 16]) == pytest.approx(0.25) and float(out_b[0, 0, 16, 16]) == pytest.approx(0.25)
    assert float(out_a.min()) == 0.0 and float(out_b.max()) == 1.0
    published = slice_to_model(a, 32)  # min-max per slice: 20 HU is the top of this slice's range
    assert float(published[0, 0, 16, 16]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown CT window"):
        SliceToModeld("image", 32, window="brian")


def test_parameters_the_published_recipe_trains():
    """Addendum item 7: under the published recipe (one positive click, no box or mask prompt, one mask output, the
    loss on that mask) exactly 557,488 of the trainable parameters never get a gradient: ``mask_downscaling`` 4,684,
    the negative-point and both box-corner embeddings 768, the three multimask hypernetwork MLPs 419,424 and the IoU
    head 132,612; so 3,681,504 of the published 4,238,992 learn. The prompt encoder and decoder are built at SAM's
    sizes (their counts do not depend on the encoder's); the encoder is small. The zero-initialised adapter terms are
    made non-zero first, as after a training step, so the shared projections get their gradient too."""
    torch.manual_seed(0)
    small_encoder = dict(image_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2, window_size=3)
    model = samihs.build_samihs(global_attn_indexes=(1,), bottleneck=8, **small_encoder)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adapter" in name:
                p.normal_(0, 0.1)
    images = torch.rand(2, 1, 64, 64)
    clicks, labels = torch.tensor([[[20.0, 30.0]], [[40.0, 12.0]]]), torch.ones(2, 1, dtype=torch.long)
    logits = model(images, point_coords=clicks, point_labels=labels, multimask_output=False)
    target = torch.zeros_like(logits)
    target[..., 8:20, 10:24] = 1
    BoundaryDoUBCELoss()(logits, target).backward()
    idle = {
        n: p.numel() for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())
    }
    groups = {
        "mask_downscaling": r"prompt_encoder\.mask_downscaling\.",
        "negative point and box corners": r"prompt_encoder\.point_embeddings\.[023]\.",
        "multimask hypernetworks": r"mask_decoder\.output_hypernetworks_mlps\.[123]\.",
        "IoU head": r"mask_decoder\.iou_prediction_head\.",
    }
    assert all(any(re.match(pattern, n) for pattern in groups.values()) for n in idle), sorted(idle)
    sizes = {group: sum(v for n, v in idle.items() if re.match(pattern, n)) for group, pattern in groups.items()}
    assert sizes == {
        "mask_downscaling": 4_684,
        "negative point and box corners": 768,
        "multimask hypernetworks": 419_424,
        "IoU head": 132_612,
    }
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    encoder_part = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and n.startswith("image_"))
    published_encoder_part = 174_432  # 24 adapters and the two shared 768 x 100 projections at ViT-B sizes
    assert trainable - encoder_part + published_encoder_part - sum(sizes.values()) == 3_681_504
