"""Encoder hooks, the forward context, decoder adapter slots and dense mask prompts of the SAM core.

Each hook or slot, filled with a zero-initialised module, must leave the outputs equal to segment-anything's (same
weights); filled with a non-zero module it must change them; empty, it must add no state-dict keys.
"""

from __future__ import annotations

import pytest
import torch
from sam_reference import ATOL, DECODER, randomise_, reference_sam, tiny_pair
from torch import nn

from common.networks.adapters import Adapter
from common.networks.sam import (
    DECODER_ADAPTER_SLOTS,
    ENCODER_HOOKS,
    VIT_PRESETS,
    ContextTap,
    ImageEncoderViT,
    ResizePosEmbed,
    TwoWayAttentionBlock,
)
from common.networks.sam.slots import call_slot_module


class PosTableAdapter(nn.Module):
    """``pos_embed`` hook: the table plus a 1x1 conv of it (zero-initialised: the identity)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, table: torch.Tensor) -> torch.Tensor:
        return table + self.conv(table.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class ImageFeatures(nn.Module):
    """``image_context`` hook: a patch-stride conv of the image into ``context["cnn"]`` ``(B, h, w, C)``."""

    uses_context = True

    def __init__(self, dim: int, patch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, images: torch.Tensor, context: dict) -> None:
        context["cnn"] = self.conv(images).permute(0, 2, 3, 1)


class CrossFromContext(nn.Module):
    """Slot module that adds a projection of ``context["cnn"]`` (a stand-in for SAMUS's cross-branch attention)."""

    uses_context = True

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, context: dict) -> torch.Tensor:
        return x + self.proj(context["cnn"])


def _fill_every_hook(encoder: ImageEncoderViT) -> None:
    dim = encoder.embed_dim
    encoder.set_hook("image_context", ImageFeatures(dim, encoder.patch_size))
    encoder.set_hook("after_patch_embed", Adapter(dim, zero_init=True))
    encoder.set_hook("pos_embed", PosTableAdapter(dim))
    encoder.set_hook("before_neck", Adapter(dim, zero_init=True))
    encoder.set_adapters("before_attn", lambda i: CrossFromContext(dim), blocks=encoder.global_attn_indexes)


def test_zero_initialised_encoder_hooks_equal_reference():
    ref, ours, size = tiny_pair("pad_10_to_12")
    encoder = ours.image_encoder
    keys_before = set(encoder.state_dict())
    _fill_every_hook(encoder)
    added = set(encoder.state_dict()) - keys_before
    assert {k.split(".")[1] for k in added if k.startswith("hooks.")} == set(ENCODER_HOOKS)
    assert {k.rsplit(".", 2)[0] for k in added if k.startswith("blocks.")} == {"blocks.1.adapters.before_attn"}
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = ref.image_encoder(x)
        context: dict = {}
        torch.testing.assert_close(encoder(x, context=context), expected, atol=ATOL, rtol=0)
        assert context["cnn"].shape == (2, size // 8, size // 8, encoder.embed_dim)
        changing = {name: encoder.get_hook(name) for name in ("after_patch_embed", "pos_embed", "before_neck")}
        changing["before_attn slot, fed by image_context"] = encoder.block(1).get_adapter("before_attn")
        for name, module in changing.items():
            saved = {k: v.clone() for k, v in module.state_dict().items()}
            randomise_(module, seed=1)
            assert (encoder(x) - expected).abs().max() > 1e-2, name
            module.load_state_dict(saved)
        for name in ENCODER_HOOKS:
            encoder.set_hook(name, None)
        encoder.set_adapters("before_attn", lambda i: None)
        assert set(encoder.state_dict()) == keys_before
        torch.testing.assert_close(encoder(x), expected, atol=ATOL, rtol=0)


def test_hook_errors():
    encoder = ImageEncoderViT(32, 8, embed_dim=16, depth=1, num_heads=2, out_chans=8, global_attn_indexes=(0,))
    with pytest.raises(KeyError, match="unknown encoder hook"):
        encoder.set_hook("after_everything", nn.Identity())
    with pytest.raises(TypeError, match="nn.Module"):
        encoder.set_hook("before_neck", lambda x: x)
    with pytest.raises(ValueError, match="needs the forward context"):
        call_slot_module(CrossFromContext(16), torch.zeros(1, 2, 2, 16), None)


def test_pos_embed_table_resized_to_the_token_grid():
    """A 1024-px-style table (8x8 here) in an encoder whose inputs give 4x4 tokens: an error without a hook, and
    with ResizePosEmbed exactly segment-anything's encoder given the resized table."""
    ov = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2, window_size=2, global_attn_indexes=(1,))
    torch.manual_seed(0)
    big = randomise_(reference_sam(64, ov).image_encoder.eval())
    ours = ImageEncoderViT(img_size=32, **{**VIT_PRESETS["vit_b"], **ov, "out_chans": 32}, pos_embed_grid=8).eval()
    state = big.state_dict()
    small = reference_sam(32, ov).image_encoder.eval()
    for name, value in state.items():  # global-block rel-pos tables are sized for the grid: take the small ones
        if value.shape != small.state_dict()[name].shape and name != "pos_embed":
            state[name] = small.state_dict()[name]
    ours.load_state_dict(state, strict=True)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    with pytest.raises(ValueError, match="'pos_embed' hook"):
        ours(x)
    resize = ResizePosEmbed((4, 4), mode="bicubic")
    ours.set_hook("pos_embed", resize)
    small.load_state_dict({**state, "pos_embed": resize(state["pos_embed"])}, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), small(x), atol=ATOL, rtol=0)
    assert set(ours.state_dict()) == set(big.state_dict())  # the hook has no parameters
    table = torch.randn(1, 4, 4, 32)
    assert resize(table) is table
    manual = torch.nn.functional.interpolate(table.permute(0, 3, 1, 2), size=(2, 3), mode="bilinear")
    torch.testing.assert_close(ResizePosEmbed((2, 3), mode="bilinear")(table), manual.permute(0, 2, 3, 1))


def test_context_tap_keeps_a_block_output():
    _, ours, size = tiny_pair("pad_10_to_12")
    encoder = ours.image_encoder
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        baseline = encoder(x)
        keys = set(encoder.state_dict())
        encoder.block(1).set_adapter("after_block", ContextTap("early"))
        context: dict = {}
        torch.testing.assert_close(encoder(x, context=context), baseline, atol=0, rtol=0)
        tokens = encoder.embed_tokens(x)
        for i in range(2):
            tokens = encoder.blocks[i](tokens, {})
        torch.testing.assert_close(context["early"], tokens, atol=1e-6, rtol=0)
    assert set(encoder.state_dict()) == keys


class PromptConditionedAdapter(nn.Module):
    """Decoder slot module ``x + up(relu(down(x) + compress(prompt_tokens)))`` (MSA's adapter 1 in shape only)."""

    uses_context = True

    def __init__(self, dim: int, hidden: int, zero_init: bool) -> None:
        super().__init__()
        self.down, self.compress, self.up = nn.Linear(dim, hidden), nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        if zero_init:
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor, context: dict) -> torch.Tensor:
        prompt = context["prompt_tokens"]
        self.seen.append(tuple(prompt.shape))
        return x + self.up(torch.relu(self.down(x) + self.compress(prompt)))


def _decoder_adapters(dim: int, zero_init: bool) -> dict[str, nn.Module]:
    return {
        "after_token_to_image": PromptConditionedAdapter(dim, dim // 4, zero_init),
        "parallel_mlp": Adapter(dim, skip=False, zero_init=zero_init),
        "after_image_to_token": Adapter(dim, zero_init=zero_init),
    }


def _decode_both(ref, ours, size, boxes):
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(7))  # one image, two boxes
    emb = ours.encode(x)
    s, d = ref.prompt_encoder(None, boxes, None)
    low_ref, iou_ref = ref.mask_decoder(ref.image_encoder(x), ref.prompt_encoder.get_dense_pe(), s, d, True)
    return ours.decode(emb, boxes=boxes, multimask_output=True), (low_ref, iou_ref)


def test_zero_initialised_decoder_slots_equal_reference():
    ref, ours, size = tiny_pair("no_pad")
    dim = DECODER["prompt_embed_dim"]
    transformer = ours.mask_decoder.transformer
    keys_before = set(ours.state_dict())
    for i, layer in enumerate(transformer.layers):
        for slot, module in _decoder_adapters(dim, zero_init=True).items():
            layer.set_adapter(slot, module, scale=0.5 if slot == "parallel_mlp" else 1.0)
    added = {k.rsplit(".", 2)[0] for k in set(ours.state_dict()) - keys_before}
    assert added == {
        f"mask_decoder.transformer.layers.{i}.adapters.{slot}"
        for i in range(DECODER["decoder_depth"])
        for slot in DECODER_ADAPTER_SLOTS
    }
    boxes = torch.tensor([[2.0, 3.0, 40.0, 50.0], [10.0, 12.0, 60.0, 60.0]])
    with torch.no_grad():
        (low, iou), (low_ref, iou_ref) = _decode_both(ref, ours, size, boxes)
        torch.testing.assert_close(low, low_ref, atol=ATOL, rtol=0)
        torch.testing.assert_close(iou, iou_ref, atol=ATOL, rtol=0)
        conditioned = transformer.layers[0].get_adapter("after_token_to_image")
        # output tokens (1 IoU + 4 mask) then the two box-corner tokens, for each of the 2 prompt sets
        assert conditioned.seen == [(2, 1 + 4 + 2, dim)]
        for slot in DECODER_ADAPTER_SLOTS:
            adapter = transformer.layers[1].get_adapter(slot)
            saved = {k: v.clone() for k, v in adapter.state_dict().items()}
            randomise_(adapter, seed=3)
            (changed, _), _ = _decode_both(ref, ours, size, boxes)
            assert (changed - low_ref).abs().max() > 1e-3, slot
            adapter.load_state_dict(saved)
    for layer in transformer.layers:
        for slot in DECODER_ADAPTER_SLOTS:
            layer.set_adapter(slot, None)
    assert set(ours.state_dict()) == keys_before


def test_decoder_slot_placement():
    """The block written out by hand: adapter 1 on the token->image attention output, adapter 2 parallel to the
    token MLP (scaled), adapter 3 on the image stream's residual sum before norm4."""
    torch.manual_seed(0)
    dim = 16
    blk = randomise_(TwoWayAttentionBlock(dim, 2, mlp_dim=24)).eval()
    adapters = _decoder_adapters(dim, zero_init=False)
    for slot, module in adapters.items():
        blk.set_adapter(slot, module, scale=0.5 if slot == "parallel_mlp" else 1.0)
    q, k = torch.randn(2, 5, dim), torch.randn(2, 12, dim)
    q_pe, k_pe = torch.randn(2, 5, dim), torch.randn(2, 12, dim)
    context = {"prompt_tokens": q_pe}
    with torch.no_grad():
        got_q, got_k = blk(q, k, q_pe, k_pe, context)
        x = blk.norm1(q + blk.self_attn(q + q_pe, q + q_pe, q))
        a = adapters["after_token_to_image"](blk.cross_attn_token_to_image(x + q_pe, k + k_pe, k), context)
        x = blk.norm2(x + a)
        x = blk.norm3(x + blk.mlp(x) + 0.5 * adapters["parallel_mlp"](x))
        keys = blk.norm4(adapters["after_image_to_token"](k + blk.cross_attn_image_to_token(k + k_pe, x + q_pe, x)))
    torch.testing.assert_close(got_q, x, atol=1e-6, rtol=0)
    torch.testing.assert_close(got_k, keys, atol=1e-6, rtol=0)
    with pytest.raises(KeyError, match="unknown adapter slot"):
        blk.set_adapter("before_attn", Adapter(dim))
    with pytest.raises(ValueError, match="serial"):
        blk.set_adapter("after_image_to_token", Adapter(dim), scale=0.5)


@pytest.mark.parametrize("with_points", [False, True])
def test_forward_with_dense_mask_prompt_matches_reference(with_points):
    """Sam.forward takes a dense mask prompt (4x the embedding, logit scale), alone or with points."""
    ref, ours, size = tiny_pair("pad_10_to_12")
    g = torch.Generator().manual_seed(8)
    x = torch.rand(2, 3, size, size, generator=g)
    hw = ours.prompt_encoder.mask_input_size
    masks = 20.0 * (torch.rand(2, 1, *hw, generator=g) > 0.5).float() - 10.0  # SAM2-style +-10 logits
    points = (torch.rand(2, 2, 2, generator=g) * (size - 1), torch.tensor([[1, 0], [1, 1]])) if with_points else None
    with torch.no_grad():
        low, iou = ours(
            x,
            point_coords=None if points is None else points[0],
            point_labels=None if points is None else points[1],
            mask_inputs=masks,
            return_iou=True,
        )
        for i in range(2):
            pts = None if points is None else (points[0][i : i + 1], points[1][i : i + 1])
            s, d = ref.prompt_encoder(pts, None, masks[i : i + 1])
            low_ref, iou_ref = ref.mask_decoder(
                ref.image_encoder(x[i : i + 1]), ref.prompt_encoder.get_dense_pe(), s, d, False
            )
            torch.testing.assert_close(low[i : i + 1], low_ref, atol=ATOL, rtol=0)
            torch.testing.assert_close(iou[i : i + 1], iou_ref, atol=ATOL, rtol=0)
        without_mask = ours(
            x, point_coords=None if points is None else points[0], point_labels=None if points is None else points[1]
        )
    assert (low - without_mask).abs().max() > 1e-3  # the mask prompt is used


def test_mask_present_mixes_frames_with_and_without_a_mask_prompt():
    """mask_present (B,): the items marked absent decode exactly as without any mask (no_mask_embed), the others as
    with their mask; a wrong shape or a flag without masks is refused."""
    _, ours, size = tiny_pair("pad_10_to_12")
    g = torch.Generator().manual_seed(9)
    x = torch.rand(2, 3, size, size, generator=g)
    masks = torch.randn(2, 1, *ours.prompt_encoder.mask_input_size, generator=g) * 5
    with torch.no_grad():
        mixed = ours(x, mask_inputs=masks, mask_present=torch.tensor([True, False]))
        with_masks = ours(x, mask_inputs=masks)
        without = ours(x)
    torch.testing.assert_close(mixed[0], with_masks[0])
    torch.testing.assert_close(mixed[1], without[1])
    assert (with_masks[1] - without[1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="mask_present"):
        ours(x, mask_present=torch.tensor([True, False]))
    with pytest.raises(ValueError, match="mask_present"):
        ours(x, mask_inputs=masks, mask_present=torch.tensor([True]))


def test_efficientsam_decoder_block_is_the_released_msa_function():
    """``decoder_efficientsam_block`` (Medical SAM Adapter's decoder since 2024): each block's self-attention stage
    equals the released code's, ``if not first: q = q + pe; q = norm1(q + self_attn(q, q, q))``, written out here
    on the block's own modules; SAM's differs (no residual in block 0, the encoding only in queries and keys)."""
    from common.networks.sam import build_sam_vit as build

    torch.manual_seed(0)
    sizes = dict(image_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, window_size=0,
                 global_attn_indexes=(0,), prompt_embed_dim=16, mask_in_chans=4, decoder_num_heads=2,
                 decoder_mlp_dim=32, iou_head_hidden_dim=16)  # fmt: skip
    sam, released = build(**sizes), build(decoder_efficientsam_block=True, **sizes)
    released.load_state_dict(sam.state_dict(), strict=True)
    seen: dict = {}
    for name, model in (("sam", sam), ("released", released)):
        for i, layer in enumerate(model.mask_decoder.transformer.layers):
            layer.register_forward_hook(lambda m, args, out, key=(name, i): seen.__setitem__(key, args))
            layer.norm1.register_forward_hook(
                lambda m, args, out, key=(name, i, "norm1"): seen.__setitem__(key, args[0])
            )
    x = torch.rand(1, 3, 32, 32)
    points = torch.tensor([[[10.0, 12.0]]]), torch.ones(1, 1, dtype=torch.long)
    with torch.no_grad():
        out_sam = sam(x, point_coords=points[0], point_labels=points[1])
        out_released = released(x, point_coords=points[0], point_labels=points[1])
        for i, layer in enumerate(released.mask_decoder.transformer.layers):
            queries, _, query_pe = seen[("released", i)][:3]
            q = queries if i == 0 else queries + query_pe
            torch.testing.assert_close(seen[("released", i, "norm1")], q + layer.self_attn(q, q, q))
        first = sam.mask_decoder.transformer.layers[0]
        queries = seen[("sam", 0)][0]
        torch.testing.assert_close(seen[("sam", 0, "norm1")], first.self_attn(queries, queries, queries))
    assert (out_sam - out_released).abs().max() > 1e-4
