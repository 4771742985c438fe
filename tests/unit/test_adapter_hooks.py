"""Adapter slots of the ViT blocks and the generic bottleneck Adapter."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from common.networks.adapters import Adapter
from common.networks.sam import ADAPTER_SLOTS, Block, ImageEncoderViT, build_sam_vit

DIM = 32
# grid 6 with window 4: window blocks pad to 8; block 1 is global
ENC = dict(
    img_size=48,
    patch_size=8,
    embed_dim=DIM,
    depth=3,
    num_heads=2,
    out_chans=16,
    window_size=4,
    global_attn_indexes=(1,),
)


def _randomised(module: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return module


@pytest.fixture()
def encoder():
    torch.manual_seed(0)
    return _randomised(ImageEncoderViT(**ENC)).eval()


@pytest.fixture(scope="module")
def image():
    return torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))


def _adapter_for(slot: str, zero_init: bool) -> Adapter:
    return Adapter(DIM, ratio=0.25, skip=ADAPTER_SLOTS[slot] == "serial", zero_init=zero_init)


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_adapter_module():
    a = Adapter(768)
    assert _n_params(a) == 295_872  # fc 768->192->768 with biases (MSA / SAMUS adapters)
    x = torch.randn(2, 5, 768)
    z = Adapter(768, zero_init=True)
    assert torch.equal(z(x), x)
    assert torch.equal(Adapter(768, skip=False, zero_init=True)(x), torch.zeros_like(x))
    assert not torch.allclose(a(x), x)
    no_skip = Adapter(768, skip=False)
    with_skip = Adapter(768, skip=True)
    with_skip.load_state_dict(no_skip.state_dict())  # the skip flag adds no parameters
    torch.testing.assert_close(with_skip(x), no_skip(x) + x)
    with pytest.raises(ValueError):
        Adapter(3, ratio=0.25)


@pytest.mark.parametrize("slot", sorted(ADAPTER_SLOTS))
def test_zero_initialised_adapter_is_neutral(encoder, image, slot):
    keys_before = set(encoder.state_dict())
    n_before = _n_params(encoder)
    with torch.no_grad():
        baseline = encoder(image)
    encoder.set_adapters(slot, lambda i: _adapter_for(slot, zero_init=True), scale=0.5 if "parallel" in slot else 1.0)
    added = set(encoder.state_dict()) - keys_before
    assert added == {
        f"blocks.{i}.adapters.{slot}.{n}.{t}" for i in range(3) for n in ("fc1", "fc2") for t in ("weight", "bias")
    }
    assert _n_params(encoder) == n_before + 3 * _n_params(Adapter(DIM))
    with torch.no_grad():
        out = encoder(image)
    torch.testing.assert_close(out, baseline, atol=1e-6, rtol=0)

    # a non-zero adapter in the same slot changes the output
    for blk in encoder.blocks:
        nn.init.normal_(blk.get_adapter(slot).fc2.weight, std=0.5)
    with torch.no_grad():
        out = encoder(image)
    assert (out - baseline).abs().max() > 1e-3

    # removing the adapters restores the exact key set and output
    encoder.set_adapters(slot, lambda i: None)
    assert set(encoder.state_dict()) == keys_before
    with torch.no_grad():
        torch.testing.assert_close(encoder(image), baseline, atol=0, rtol=0)


def test_gradients_reach_every_slot(encoder, image):
    for slot in ADAPTER_SLOTS:
        encoder.set_adapters(
            slot, lambda i, slot=slot: _adapter_for(slot, zero_init=False), scale=0.5 if "parallel" in slot else 1.0
        )
    encoder.requires_grad_(False)
    for blk in encoder.blocks:
        blk.adapters.requires_grad_(True)
    encoder(image).square().mean().backward()
    for i, blk in enumerate(encoder.blocks):
        for slot in ADAPTER_SLOTS:
            grad = blk.adapters[slot].fc1.weight.grad
            assert grad is not None and grad.abs().sum() > 0, (i, slot)
    assert encoder.blocks[0].attn.qkv.weight.grad is None


def test_unused_slots_add_no_keys():
    sam = build_sam_vit("vit_b", device="meta")
    keys = list(sam.state_dict())
    assert not any("adapter" in k for k in keys)
    assert [k for k in keys if k.startswith("image_encoder.blocks.0.")] == [
        f"image_encoder.blocks.0.{k}"
        for k in (
            "norm1.weight",
            "norm1.bias",
            "attn.rel_pos_h",
            "attn.rel_pos_w",
            "attn.qkv.weight",
            "attn.qkv.bias",
            "attn.proj.weight",
            "attn.proj.bias",
            "norm2.weight",
            "norm2.bias",
            "mlp.lin1.weight",
            "mlp.lin1.bias",
            "mlp.lin2.weight",
            "mlp.lin2.bias",
        )
    ]


def _manual_block(blk: Block, x, space=None, mlp_adapter=None, attn_in=None, mlp_in=None, pre=None, scale=0.5):
    """The block written out by hand, for checking slot placement and order."""
    x = pre(x) if pre else x
    xn = blk.norm1(x)
    xn = attn_in(xn) if attn_in else xn
    a = blk.attend(xn)
    a = space(a) if space else a
    x = x + a
    xn = blk.norm2(x)
    xn = mlp_in(xn) if mlp_in else xn
    out = x + blk.mlp(xn)
    return out + scale * mlp_adapter(xn) if mlp_adapter else out


@pytest.mark.parametrize("window", [0, 4])
def test_msa_and_samihs_placements(window):
    """MSA: serial adapter after attention + parallel MLP adapter (scale 0.5); SAMIHS: serial adapters on the
    LayerNorm outputs feeding attention and the MLP; 3DSAM: serial adapter at the block input."""
    torch.manual_seed(0)
    blk = _randomised(Block(DIM, 2, use_rel_pos=True, window_size=window, input_size=(6, 6))).eval()
    x = torch.randn(2, 6, 6, DIM)
    space, mlp_ad = Adapter(DIM), Adapter(DIM, skip=False)
    blk.set_adapter("after_attn", space)
    blk.set_adapter("parallel_mlp", mlp_ad, scale=0.5)
    with torch.no_grad():
        torch.testing.assert_close(blk(x), _manual_block(blk, x, space=space, mlp_adapter=mlp_ad), atol=1e-6, rtol=0)
    blk.set_adapter("after_attn", None)
    blk.set_adapter("parallel_mlp", None)
    attn_in, mlp_in, pre = Adapter(DIM), Adapter(DIM), Adapter(DIM, act=nn.ReLU)
    blk.set_adapter("before_attn", attn_in)
    blk.set_adapter("before_mlp", mlp_in)
    blk.set_adapter("before_block", pre)
    with torch.no_grad():
        torch.testing.assert_close(
            blk(x), _manual_block(blk, x, attn_in=attn_in, mlp_in=mlp_in, pre=pre), atol=1e-6, rtol=0
        )


def test_parallel_attn_and_after_mlp():
    torch.manual_seed(0)
    blk = _randomised(Block(DIM, 2, use_rel_pos=True, window_size=4, input_size=(6, 6))).eval()
    x = torch.randn(1, 6, 6, DIM)
    par, post = Adapter(DIM, skip=False), Adapter(DIM)
    blk.set_adapter("parallel_attn", par, scale=2.0)
    blk.set_adapter("after_mlp", post)
    with torch.no_grad():
        xn = blk.norm1(x)
        x1 = x + (blk.attend(xn) + 2.0 * par(xn))
        expected = x1 + post(blk.mlp(blk.norm2(x1)))
        torch.testing.assert_close(blk(x), expected, atol=1e-6, rtol=0)


def test_slot_errors():
    blk = Block(DIM, 2)
    with pytest.raises(KeyError, match="unknown adapter slot"):
        blk.set_adapter("after_everything", Adapter(DIM))
    with pytest.raises(ValueError, match="serial"):
        blk.set_adapter("after_attn", Adapter(DIM), scale=0.5)
    with pytest.raises(TypeError):
        blk.set_adapter("after_attn", lambda x: x)
    assert blk.get_adapter("after_attn") is None
