"""SAM core vs the `segment-anything` reference (same random weights), parameter counts, batching, errors."""

from __future__ import annotations

import pytest
import torch
from sam_reference import ATOL, DECODER, TINY_CONFIGS, prompt_cases, randomise_, reference_sam, sam_ref, tiny_pair
from torch import nn

from common.networks.sam import VIT_PRESETS, ImageEncoderViT, build_sam_vit
from common.networks.sam.image_encoder import BIAS_WORKSPACE


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_image_encoder_matches_reference(name):
    ref, ours, size = tiny_pair(name)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = ref.image_encoder(x)
        got = ours.encode(x)
    grid = size // ours.image_encoder.patch_size
    assert got.shape == expected.shape == (2, DECODER["prompt_embed_dim"], grid, grid)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    assert expected.abs().mean() > 0.1  # the comparison is not between two near-zero tensors


def test_image_encoder_non_square_grid_and_rel_pos_resize():
    """Without abs-pos the encoder takes non-square inputs: windows pad H and W differently (6->8, 10->12) and
    the global block's rel-pos tables (sized for 8x8) are resized to 6 and 10."""
    ov = dict(
        patch_size=8, embed_dim=32, depth=2, num_heads=2, window_size=4, global_attn_indexes=(1,), use_abs_pos=False
    )
    torch.manual_seed(0)
    ref = randomise_(reference_sam(64, ov).image_encoder.eval())
    ours = ImageEncoderViT(img_size=64, **{**VIT_PRESETS["vit_b"], **ov, "out_chans": 32}).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.rand(1, 3, 48, 80)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["no_pad", "pad_10_to_12"])
def test_prompt_encoder_matches_reference(name):
    ref, ours, size = tiny_pair(name)
    pe_ref, pe = ref.prompt_encoder, ours.prompt_encoder
    with torch.no_grad():
        torch.testing.assert_close(pe.get_dense_pe(), pe_ref.get_dense_pe(), atol=ATOL, rtol=0)
        for case, kw in prompt_cases(2, size, mask_hw=pe.mask_input_size[0]).items():
            kw_ref = {"points": None, "boxes": None, "masks": None, **kw}
            s_ref, d_ref = pe_ref(**kw_ref)
            s, d = pe(**kw)
            assert s.shape == s_ref.shape, case
            torch.testing.assert_close(s, s_ref, atol=ATOL, rtol=0, msg=case)
            torch.testing.assert_close(d, d_ref, atol=ATOL, rtol=0, msg=case)
        # no prompt at all: empty sparse set, no-mask dense embedding
        s_ref, d_ref = pe_ref(None, None, None)
        s, d = pe()
        assert s.shape == s_ref.shape == (1, 0, DECODER["prompt_embed_dim"])
        torch.testing.assert_close(d, d_ref, atol=0, rtol=0)


def test_point_prompt_semantics():
    """One point without a box gets a padding token (-1) appended; with a box it does not."""
    _, ours, size = tiny_pair("no_pad")
    pe = ours.prompt_encoder
    coords, labels = torch.tensor([[[10.0, 20.0]]]), torch.tensor([[1]])
    with torch.no_grad():
        s, _ = pe(points=(coords, labels))
        assert s.shape[1] == 2
        torch.testing.assert_close(s[0, 1], pe.not_a_point_embed.weight[0])
        s_box, _ = pe(points=(coords, labels), boxes=torch.tensor([[1.0, 2.0, 30.0, 40.0]]))
        assert s_box.shape[1] == 3
        # +0.5 px shift, coordinates normalised by (W, H)
        expected = pe.pe_layer._encode(torch.tensor([[[10.5 / size, 20.5 / size]]])) + pe.point_embeddings[1].weight
        torch.testing.assert_close(s[:, :1], expected)


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
@pytest.mark.parametrize("multimask", [False, True])
def test_masks_and_iou_match_reference(name, multimask):
    ref, ours, size = tiny_pair(name)
    batch = 2
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(3))
    mask_hw = ours.prompt_encoder.mask_input_size[0]
    with torch.no_grad():
        emb = ours.encode(x)
        emb_ref = ref.image_encoder(x)
        pe_ref = ref.prompt_encoder.get_dense_pe()
        for case, kw in prompt_cases(batch, size, mask_hw=mask_hw).items():
            pts = kw.get("points")
            low, iou = ours.decode(
                emb,
                point_coords=None if pts is None else pts[0],
                point_labels=None if pts is None else pts[1],
                boxes=kw.get("boxes"),
                mask_inputs=kw.get("masks"),
                multimask_output=multimask,
            )
            n_out = 3 if multimask else 1
            assert low.shape == (batch, n_out, 4 * emb.shape[-2], 4 * emb.shape[-1]), case
            assert iou.shape == (batch, n_out), case
            for i in range(batch):  # the reference decodes one image at a time
                kw_i = {
                    "points": None if pts is None else (pts[0][i : i + 1], pts[1][i : i + 1]),
                    "boxes": None if "boxes" not in kw else kw["boxes"][i : i + 1],
                    "masks": None if "masks" not in kw else kw["masks"][i : i + 1],
                }
                s, d = ref.prompt_encoder(**kw_i)
                low_ref, iou_ref = ref.mask_decoder(emb_ref[i : i + 1], pe_ref, s, d, multimask)
                torch.testing.assert_close(low[i : i + 1], low_ref, atol=ATOL, rtol=0, msg=f"{case} masks")
                torch.testing.assert_close(iou[i : i + 1], iou_ref, atol=ATOL, rtol=0, msg=f"{case} iou")
            assert low.std() > 1e-2  # informative logits


def test_one_embedding_many_prompts_broadcast():
    """LiteMedSAM-style per-box decoding: one slice embedding (batch 1), B boxes."""
    ref, ours, size = tiny_pair("pad_10_to_12")
    boxes = torch.tensor([[2.0, 3.0, 40.0, 50.0], [10.0, 12.0, 70.0, 60.0], [0.0, 0.0, 79.0, 79.0]])
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        emb = ours.encode(x)
        low, iou = ours.decode(emb, boxes=boxes)
        assert low.shape[0] == iou.shape[0] == 3
        s, d = ref.prompt_encoder(None, boxes, None)
        low_ref, iou_ref = ref.mask_decoder(ref.image_encoder(x), ref.prompt_encoder.get_dense_pe(), s, d, False)
        torch.testing.assert_close(low, low_ref, atol=ATOL, rtol=0)
        torch.testing.assert_close(iou, iou_ref, atol=ATOL, rtol=0)
        # forward() = encode + decode, box prompts (B, 1, 4)
        torch.testing.assert_close(ours(x.expand(3, -1, -1, -1), boxes=boxes[:, None]), low, atol=ATOL, rtol=0)
        with pytest.raises(ValueError, match="batch"):
            ours.decode(emb.expand(2, -1, -1, -1), boxes=boxes)


def test_decode_input_errors():
    _, ours, size = tiny_pair("no_pad")
    emb = torch.zeros(1, DECODER["prompt_embed_dim"], 4, 4)
    with pytest.raises(ValueError, match="together"):
        ours.decode(emb, point_coords=torch.zeros(1, 1, 2))
    with pytest.raises(ValueError, match="image_embeddings"):
        ours.decode(torch.zeros(1, DECODER["prompt_embed_dim"], 5, 5), boxes=torch.zeros(1, 4))
    with pytest.raises(ValueError, match="mask prompts"):
        ours.decode(emb, mask_inputs=torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="disagree"):
        ours.decode(emb, boxes=torch.zeros(2, 4), point_coords=torch.zeros(3, 1, 2), point_labels=torch.ones(3, 1))
    with pytest.raises(ValueError, match="pos_embed"):
        ours.encode(torch.zeros(1, 3, size + 16, size + 16))
    with pytest.raises(ValueError, match="expects images"):
        ours.encode(torch.zeros(1, 1, size, size))


def test_attention_goes_through_sdpa(monkeypatch):
    """Every encoder block and every decoder attention calls F.scaled_dot_product_attention, with the rel-pos
    bias as a float attn_mask in the encoder."""
    _, ours, size = tiny_pair("no_pad")
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        calls.append(None if attn_mask is None else tuple(attn_mask.shape))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        ours.image_encoder(torch.rand(1, 3, size, size))
    assert calls == [(1, 2, 16, 16)] * 2  # (windows*B, heads, N, N): one 4x4 window, then global 4x4
    calls.clear()
    with torch.no_grad():
        ours.decode(torch.rand(1, DECODER["prompt_embed_dim"], 4, 4), boxes=torch.tensor([[1.0, 1.0, 9.0, 9.0]]))
    assert len(calls) == 2 * 3 + 1 and all(c is None for c in calls)


def test_rel_pos_bias_workspace_without_autograd():
    """Without autograd the blocks write their rel-pos bias into one tensor per shape kept in the forward's context
    (the 4x4 windows and the 10x10 global grid of "pad_10_to_12": two tensors for three blocks), with the same
    output as fresh tensors; the encoder removes it when its blocks are done. With autograd nothing is shared and
    gradients reach the rel-pos tables."""
    ref, ours, size = tiny_pair("pad_10_to_12")
    encoder = ours.image_encoder
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = ref.image_encoder(x)
        tokens = encoder.embed_tokens(x)
    for mode in (torch.no_grad, torch.inference_mode):
        context: dict = {}
        with mode():
            torch.testing.assert_close(encoder(x, context), expected, atol=ATOL, rtol=0)
            assert context == {}
            for blk in encoder.blocks:
                blk(tokens, context)
        shapes = sorted(tuple(key[0]) for key in context[BIAS_WORKSPACE])
        assert shapes == [(1, 4, 10, 10, 10, 10), (9, 4, 4, 4, 4, 4)]  # global grid; 9 windows of 4x4
        workspace = list(context[BIAS_WORKSPACE].values())
        with mode():
            encoder.blocks[0](tokens, context)  # later calls with the same context reuse its tensors
        assert all(a is b for a, b in zip(workspace, context[BIAS_WORKSPACE].values()))
    context = {}
    encoder.blocks[1](tokens, context)
    assert context[BIAS_WORKSPACE] == {}
    out = encoder(x)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)
    out.square().mean().backward()
    assert all(blk.attn.rel_pos_h.grad.abs().sum() > 0 for blk in encoder.blocks)


@pytest.mark.slow
def test_vit_b_1024_matches_reference():
    """Published ViT-B geometry at 1024 px (window 14 padded 64->70, 127-row global rel-pos), one image."""
    torch.manual_seed(0)
    ref = sam_ref.Sam(
        image_encoder=reference_sam(1024, {}, decoder={**DECODER, "prompt_embed_dim": 256}).image_encoder,
        prompt_encoder=sam_ref.PromptEncoder(
            embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16
        ),
        mask_decoder=sam_ref.MaskDecoder(
            num_multimask_outputs=3,
            transformer=sam_ref.TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
    ).eval()
    with torch.no_grad():  # rel-pos and pos-embed are zeros at init: make them informative
        for name, p in ref.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                p.normal_(0.0, 0.2)
    ours = build_sam_vit("vit_b", image_size=1024, device="meta")
    ours.load_state_dict(ref.state_dict(), strict=True, assign=True)
    ours.eval()
    x = torch.rand(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(4))
    box = torch.tensor([[200.0, 300.0, 700.0, 800.0]])
    pts = torch.tensor([[[450.0, 550.0], [100.0, 900.0]]]), torch.tensor([[1, 0]])
    with torch.no_grad():
        emb_ref = ref.image_encoder(x)
        emb = ours.encode(x)
        assert emb.shape == (1, 256, 64, 64)
        torch.testing.assert_close(emb, emb_ref, atol=ATOL, rtol=0)
        pe_ref = ref.prompt_encoder.get_dense_pe()
        for multimask in (False, True):
            s, d = ref.prompt_encoder(pts, box, None)
            low_ref, iou_ref = ref.mask_decoder(emb_ref, pe_ref, s, d, multimask)
            low, iou = ours.decode(emb, point_coords=pts[0], point_labels=pts[1], boxes=box, multimask_output=multimask)
            assert low.shape == (1, 3 if multimask else 1, 256, 256)
            torch.testing.assert_close(low, low_ref, atol=ATOL, rtol=0)
            torch.testing.assert_close(iou, iou_ref, atol=ATOL, rtol=0)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_vit_b_parameter_counts():
    sam = build_sam_vit("vit_b", device="meta")
    assert _count(sam.image_encoder) == 89_670_912
    assert _count(sam.prompt_encoder) == 6_220
    assert _count(sam.mask_decoder) == 4_058_340
    assert _count(sam) == 93_735_472
    assert "pixel_mean" not in sam.state_dict() and "pixel_std" not in sam.state_dict()


@pytest.mark.parametrize("preset", ["vit_b", "vit_l", "vit_h"])
def test_published_sizes_match_reference_key_layout(preset):
    from segment_anything import sam_model_registry

    ours = build_sam_vit(preset, device="meta")
    with torch.device("meta"):
        ref = sam_model_registry[preset]()
    assert _count(ours) == _count(ref)
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    assert list(ours_sd) == list(ref_sd)
    assert all(ours_sd[k].shape == ref_sd[k].shape for k in ref_sd)


def test_build_rejects_unknown_values():
    with pytest.raises(ValueError, match="vit_x"):
        build_sam_vit("vit_x")
    with pytest.raises(TypeError, match="embed_dims"):
        build_sam_vit("vit_b", device="meta", embed_dims=3)
    with pytest.raises(ValueError, match="global_attn_indexes"):
        build_sam_vit("vit_b", device="meta", depth=2)
