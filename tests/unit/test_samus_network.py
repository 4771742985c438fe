"""SAMUS and HQ-SAMUS networks: exact published counts, trainable sets, forward order against a reference written
from the spec on segment-anything's modules (in the authors' key layout, so the checkpoint converter is checked
too), zero-initialised adapters, SAM initialisation, HQ decoder against segment-anything-hq."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d as RefLayerNorm2d
from segment_anything.modeling.image_encoder import Block as RefBlock
from torch import nn

from common.networks import samus
from common.networks.sam import CheckpointError
from tests.sam_reference import randomise_, sam_shaped_for_samus

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

TINY = samus.TINY_SIZES
GRID = TINY["image_size"] // TINY["patch_stride"]
DIM = TINY["embed_dim"]


def _count(model: nn.Module, trainable: bool | None = None) -> int:
    return sum(p.numel() for p in model.parameters() if trainable is None or p.requires_grad == trainable)


@pytest.mark.parametrize(
    "kwargs, trainable, total",
    [
        (dict(), 39_653_120, 133_323_568),
        (dict(hq=True), 40_724_224, 134_394_672),
        (dict(hq=True, hq_schedule="hq_only"), 1_071_104, 134_394_672),
    ],
    ids=["samus", "hq_samus_joint", "hq_samus_hq_only"],
)
def test_published_parameter_counts(kwargs, trainable, total):
    model = samus.build_samus(device="meta", **kwargs)
    assert (_count(model, True), _count(model)) == (trainable, total)


def test_published_trainable_set_is_new_modules_and_global_rel_pos():
    model = samus.build_samus(device="meta")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("prompt_encoder.", "mask_decoder.")) for n in trainable)
    rel_pos = {n for n in trainable if ".attn.rel_pos_" in n}
    assert rel_pos == {f"image_encoder.blocks.{i}.attn.rel_pos_{a}" for i in (2, 5, 8, 11) for a in "hw"}
    assert model.state_dict()["image_encoder.blocks.2.attn.rel_pos_h"].shape == (63, 64)
    assert {"image_encoder.pos_embed", "image_encoder.patch_embed.proj.weight"}.isdisjoint(trainable)
    # the MLP adapters and cross-branch attention sit in the global blocks only
    adapter_blocks = {int(n.split(".")[2]) for n in trainable if ".adapters." in n}
    assert adapter_blocks == {2, 5, 8, 11}


def test_vit_l_global_blocks_come_from_global_attn_indexes_not_name_matching():
    """Upstream's substring rule ('2', '5', '8', '11') would also catch blocks 12, 15, 18, 20-22 of ViT-L."""
    model = samus.build_samus(preset="vit_l", device="meta")
    trained_rel = {int(n.split(".")[2]) for n, p in model.named_parameters() if p.requires_grad and "rel_pos" in n}
    assert trained_rel == {5, 11, 17, 23}


# ---- a reference SAMUS encoder written from the spec, on segment-anything's blocks, in the authors' key layout ----
class _RefAdapter(nn.Module):
    def __init__(self, dim, skip):
        super().__init__()
        self.skip = skip
        self.act = nn.GELU()
        self.D_fc1, self.D_fc2 = nn.Linear(dim, dim // 4), nn.Linear(dim // 4, dim)

    def forward(self, x):
        y = self.D_fc2(self.act(self.D_fc1(x)))
        return x + y if self.skip else y


class _RefConv(nn.Module):  # upstream SingleConv: .conv = [conv, LN2d, GELU]
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), RefLayerNorm2d(cout), nn.GELU())

    def forward(self, x):
        return self.conv(x)


class _RefDown(nn.Module):  # upstream SingleDown: .maxpool_conv = [pool, conv, LN2d, GELU]
    def __init__(self, cin, cout):
        super().__init__()
        self.maxpool_conv = nn.Sequential(
            nn.MaxPool2d(2), nn.Conv2d(cin, cout, 3, padding=1, bias=False), RefLayerNorm2d(cout), nn.GELU()
        )

    def forward(self, x):
        return self.maxpool_conv(x)


class _RefCrossAttention(nn.Module):  # explicit softmax attention, heads split by hand
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x, f):
        b, h, w, c = x.shape
        split = lambda t: t.reshape(b, h * w, self.heads, -1).permute(0, 2, 1, 3)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(f)), split(self.v(f))
        attn = (q @ k.transpose(-1, -2) * (c // self.heads) ** -0.5).softmax(-1)
        return self.proj((attn @ v).permute(0, 2, 1, 3).reshape(b, h, w, c))


class _RefParaBlock(nn.Module):
    """Spec 1.6: SAM's block (segment-anything) with, in global blocks, CBA on the normed input, refine after it,
    and the 0.5-scaled MLP adapter on norm2's output."""

    def __init__(self, window):
        super().__init__()
        sam = RefBlock(DIM, TINY["num_heads"], use_rel_pos=True, window_size=window, input_size=(GRID, GRID))
        self.norm1, self.attn, self.norm2, self.mlp = sam.norm1, sam.attn, sam.norm2, sam.mlp
        sam.norm1.eps = sam.norm2.eps = 1e-6
        self._sam = [sam]  # for its windowed forward (not registered: the keys stay upstream's)
        self.window = window
        if window == 0:
            self.MLP_Adapter = _RefAdapter(DIM, skip=False)
            self.Space_Adapter = _RefCrossAttention(DIM, TINY["num_heads"])
            self.refine_Adapter = _RefConv(DIM, DIM)

    def forward(self, x, cnnx):
        if self.window:
            return self._sam[0](x), cnnx
        shortcut, xn = x, self.norm1(x)
        xn = xn + self.Space_Adapter(xn, cnnx)
        cnnx = self.refine_Adapter(cnnx.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = shortcut + self.attn(xn)
        xn = self.norm2(x)
        return x + self.mlp(xn) + 0.5 * self.MLP_Adapter(xn), cnnx


class _RefSamusEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        k, s = TINY["patch_kernel"], TINY["patch_stride"]
        self.k, self.s = k, s
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, DIM, k, stride=s)
        self.pos_embed = nn.Parameter(torch.zeros(1, TINY["pos_embed_grid"], TINY["pos_embed_grid"], DIM))
        self.input_Adapter = _RefAdapter(DIM, skip=True)
        self.post_pos_embed = nn.Module()
        self.post_pos_embed.downs = nn.ModuleList([_RefDown(DIM, DIM)])
        cnn = nn.Module()
        c = TINY["cnn_channels"]
        cnn.inc, cnn.downs = _RefConv(3, c[0]), nn.ModuleList([_RefDown(c[0], c[1]), _RefDown(c[1], DIM)])
        self.cnn_embed = cnn
        windows = [0 if i in TINY["global_attn_indexes"] else TINY["window_size"] for i in range(TINY["depth"])]
        self.blocks = nn.ModuleList(_RefParaBlock(w) for w in windows)
        out = TINY["prompt_embed_dim"]
        self.neck = nn.Sequential(
            nn.Conv2d(DIM, out, 1, bias=False), RefLayerNorm2d(out), nn.Conv2d(out, out, 3, padding=1, bias=False)
        )
        self.neck.append(RefLayerNorm2d(out))

    def forward(self, x):
        x = x.repeat(1, 3, 1, 1)
        cnnx = self.cnn_embed.inc(x)
        for down in self.cnn_embed.downs:
            cnnx = down(cnnx)
        cnnx = cnnx.permute(0, 2, 3, 1)
        size = x.shape[-1] + self.k - self.s
        tokens = self.patch_embed.proj(F.interpolate(x, (size, size), mode="bilinear")).permute(0, 2, 3, 1)
        tokens = self.input_Adapter(tokens)
        pos = self.post_pos_embed.downs[0](self.pos_embed.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        tokens = tokens + pos
        for blk in self.blocks:
            tokens, cnnx = blk(tokens, cnnx)
        return self.neck((tokens + 0.5 * cnnx).permute(0, 3, 1, 2))


@pytest.fixture(scope="module")
def reference_and_ours():
    torch.manual_seed(0)
    ref = randomise_(_RefSamusEncoder()).eval()
    ours = samus.build_samus(**TINY).eval()
    upstream = {f"image_encoder.{k}": v for k, v in ref.state_dict().items()}
    sam_rest = {k: v for k, v in ours.state_dict().items() if not k.startswith("image_encoder.")}
    ours.load_state_dict(samus.from_upstream_keys({**upstream, **sam_rest}), strict=True)
    return ref, ours


def test_encoder_equals_reference_from_authors_key_layout(reference_and_ours):
    ref, ours = reference_and_ours
    images = torch.rand(2, 1, TINY["image_size"], TINY["image_size"], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected, got = ref(images), ours.encode(images)
    assert got.shape == (2, TINY["prompt_embed_dim"], GRID, GRID)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_upstream_keys_cover_every_parameter(reference_and_ours):
    ref, ours = reference_and_ours
    renamed = set(samus.from_upstream_keys({f"image_encoder.{k}": v for k, v in ref.state_dict().items()}))
    assert renamed == {k for k in ours.state_dict() if k.startswith("image_encoder.")}
    assert samus.from_upstream_keys({"module.image_encoder.input_Adapter.D_fc1.weight": torch.zeros(1)}) == {
        "image_encoder.hooks.after_patch_embed.fc1.weight": torch.zeros(1)
    }


def test_zeroed_adapters_leave_sams_trunk():
    """With the feature/MLP adapters and the cross-branch attention output at zero and the CNN features zeroed by
    the last refine, SAMUS is SAM's blocks and neck (segment-anything) on the overlapped tokens + adapted position.
    Not zero-equivalent by construction: the overlapped patch embedding (stride 8 on the resized image), the
    position adapter (a conv of SAM's table, not the table) and the resized global rel-pos tables."""
    torch.manual_seed(1)
    model = randomise_(samus.build_samus(**TINY)).eval()
    enc = model.image_encoder
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("fc2.weight", "fc2.bias", "before_attn.proj.weight", "before_attn.proj.bias")):
                p.zero_()
            if ".refine.1." in name:
                p.zero_()
    images = torch.rand(1, 1, TINY["image_size"], TINY["image_size"])
    windows = [0 if i in TINY["global_attn_indexes"] else TINY["window_size"] for i in range(TINY["depth"])]
    ref_blocks = [
        RefBlock(DIM, TINY["num_heads"], use_rel_pos=True, window_size=w, input_size=(GRID, GRID)) for w in windows
    ]
    for ours_blk, ref_blk in zip(enc.blocks, ref_blocks):
        ref_blk.norm1.eps = ref_blk.norm2.eps = 1e-6
        sam_keys = {k: v for k, v in ours_blk.state_dict().items() if not k.startswith("adapters.")}
        ref_blk.load_state_dict(sam_keys, strict=True)
    with torch.no_grad():
        tokens = enc.patch_embed(images.expand(-1, 3, -1, -1)) + enc.get_hook("pos_embed")(enc.pos_embed)
        for blk in ref_blocks:
            tokens = blk(tokens)
        expected = enc.neck(tokens.permute(0, 3, 1, 2))
        torch.testing.assert_close(model.encode(images), expected, atol=1e-5, rtol=1e-4)


def _tiny_sam_checkpoint(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return randomise_(sam_shaped_for_samus(TINY)).state_dict()


def test_sam_initialisation_loads_every_sam_key_and_resizes_global_rel_pos():
    state = _tiny_sam_checkpoint()
    model = samus.build_samus(**TINY)
    left = samus.load_sam_weights(model, state)
    assert set(left) == set(samus.new_module_keys(model)) and left
    assert all(k.startswith("image_encoder.hooks.") or ".adapters." in k for k in left)
    loaded = model.state_dict()
    assert torch.equal(loaded["image_encoder.pos_embed"], state["image_encoder.pos_embed"])  # table kept (16x16)
    assert torch.equal(loaded["image_encoder.patch_embed.proj.weight"], state["image_encoder.patch_embed.proj.weight"])
    g = TINY["global_attn_indexes"][0]
    table = state[f"image_encoder.blocks.{g}.attn.rel_pos_h"]  # (31, hd) -> (15, hd)
    expected = F.interpolate(table[None, None], size=(2 * GRID - 1, table.shape[1]), mode="bilinear")[0, 0]
    torch.testing.assert_close(loaded[f"image_encoder.blocks.{g}.attn.rel_pos_h"], expected)
    window_block = next(i for i in range(TINY["depth"]) if i != g)
    key = f"image_encoder.blocks.{window_block}.attn.rel_pos_w"
    assert torch.equal(loaded[key], state[key])


@pytest.mark.parametrize("damage", ["missing_sam_key", "stray_key", "carries_new_module"])
def test_sam_initialisation_refuses_checkpoints_that_do_not_fit(damage):
    state = _tiny_sam_checkpoint()
    model = samus.build_samus(**TINY)
    if damage == "missing_sam_key":
        del state["mask_decoder.iou_token.weight"]
    elif damage == "stray_key":
        state["image_encoder.blocks.7.norm1.weight"] = torch.ones(DIM)
    else:
        state["image_encoder.hooks.after_patch_embed.fc1.bias"] = torch.zeros(DIM // 4)
    with pytest.raises(CheckpointError):
        samus.load_sam_weights(model, state)


def _prompts(batch: int = 2):
    coords = torch.tensor([[[10.0, 12.0]], [[20.0, 5.0]]])[:batch]
    return dict(point_coords=coords, point_labels=torch.ones(batch, 1, dtype=torch.long))


def test_boxes_are_used_by_default_and_ignored_in_upstream_mode():
    torch.manual_seed(2)
    model = randomise_(samus.build_samus(**TINY)).eval()
    images = torch.rand(2, 1, TINY["image_size"], TINY["image_size"])
    boxes = torch.tensor([[2.0, 3.0, 20.0, 25.0], [5.0, 5.0, 30.0, 30.0]])
    with torch.no_grad():
        clicks = model(images, **_prompts())
        with_box = model(images, boxes=boxes, **_prompts())
        model.use_boxes = False
        ignored = model(images, boxes=boxes, **_prompts())
        with pytest.raises(ValueError, match="ignores box prompts"):
            model(images, boxes=boxes)
    assert with_box.shape == (2, 1, 4 * GRID, 4 * GRID)
    assert not torch.allclose(with_box, clicks)
    torch.testing.assert_close(ignored, clicks)


def test_hq_decoder_equals_segment_anything_hq():
    """Our HQ decoder against SysCV's MaskDecoderHQ (segment-anything-hq 0.3) with the same weights, single image."""
    from segment_anything_hq.modeling.mask_decoder_hq import MaskDecoderHQ
    from segment_anything_hq.modeling.transformer import TwoWayTransformer

    torch.manual_seed(4)
    model = randomise_(samus.build_samus(hq=True, **TINY)).eval()
    dec = model.mask_decoder
    t = TINY["prompt_embed_dim"]
    ref = MaskDecoderHQ(
        transformer_dim=t,
        transformer=TwoWayTransformer(depth=2, embedding_dim=t, num_heads=2, mlp_dim=TINY["decoder_mlp_dim"]),
        iou_head_hidden_dim=TINY["iou_head_hidden_dim"],
        vit_dim=DIM,
    ).eval()
    ref.load_state_dict(dec.state_dict(), strict=True)
    images = torch.rand(1, 1, TINY["image_size"], TINY["image_size"])
    with torch.no_grad():
        emb = model.encode(images)
        sparse, dense = model.prompt_encoder(
            points=(torch.tensor([[[9.0, 9.0]], [[25.0, 3.0]]]), torch.ones(2, 1, dtype=torch.long)),
            boxes=None,
            masks=None,
        )
        pe = model.prompt_encoder.get_dense_pe()
        for multimask in (False, True):
            for hq_only in (False, True):
                dec.hq_token_only = hq_only
                got, _ = dec(emb.embeddings, pe, sparse, dense, multimask, early_features=emb.early)
                want, _ = ref(emb.embeddings, pe, sparse, dense, multimask, hq_only, [emb.early])
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_hq_features_stay_per_image_with_batch_aligned_embeddings():
    """Two images with one prompt each (HQ-SAM's decoder fails here): each equals its image decoded alone."""
    torch.manual_seed(5)
    model = randomise_(samus.build_samus(hq=True, **TINY)).eval()
    images = torch.rand(2, 1, TINY["image_size"], TINY["image_size"])
    with torch.no_grad():
        both = model(images, **_prompts())
        single = [model(images[i : i + 1], **{k: v[i : i + 1] for k, v in _prompts().items()}) for i in range(2)]
    torch.testing.assert_close(both, torch.cat(single), atol=1e-5, rtol=1e-4)


def test_hq_output_is_sam_plus_hq_logits_or_hq_only():
    torch.manual_seed(6)
    model = randomise_(samus.build_samus(hq=True, **TINY)).eval()
    with torch.no_grad():
        model.mask_decoder.hf_mlp.layers[-1].weight.zero_()
        model.mask_decoder.hf_mlp.layers[-1].bias.zero_()  # HQ mask == 0
        images = torch.rand(1, 1, TINY["image_size"], TINY["image_size"])
        summed = model(images, **_prompts(1))
        model.mask_decoder.hq_token_only = True
        hq_only = model(images, **_prompts(1))
    assert summed.abs().sum() > 0
    assert torch.count_nonzero(hq_only) == 0


def test_hq_only_schedule_trains_only_hq_modules_and_skips_encoder_gradients():
    model = samus.build_samus(hq=True, hq_schedule="hq_only", **TINY)
    images = torch.rand(2, 1, TINY["image_size"], TINY["image_size"])
    emb = model.encode(images)
    assert not emb.embeddings.requires_grad  # no encoder graph kept (HQ-SAM runs SAM under no_grad)
    model(images, **_prompts()).sum().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all(n.split(".")[1] in samus.HQ_MODULES for n in with_grad)


def test_hq_initialisation_from_trained_samus_leaves_only_hq_keys():
    trained = samus.build_samus(**TINY).state_dict()
    hq = samus.build_samus(hq=True, hq_schedule="hq_only", **TINY)
    left = samus.load_samus_weights(hq, trained)
    assert left and all(k.split(".")[1] in samus.HQ_MODULES for k in left)
    with pytest.raises(CheckpointError):
        samus.load_samus_weights(hq, {k: v for k, v in trained.items() if "before_attn" not in k})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(hq_schedule="hq_only"), "needs hq=True"),
        (dict(hq_schedule="later"), "hq_schedule must be one of"),
        (dict(cnn_channels=(4,)), "must equal patch_stride"),
        (dict(pos_embed_grid=12), "power of 2"),
    ],
)
def test_bad_sizes_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        samus.build_samus(**{**TINY, **kwargs})


def test_converter_writes_the_authors_checkpoint_in_our_layout(reference_and_ours, tmp_path):
    """tools/convert_checkpoint.py samus: a DataParallel-saved upstream state dict -> a plain, strictly loading
    model.pt whose encoder equals the authors' (reference) encoder."""
    from convert_checkpoint import samus_published

    ref, ours = reference_and_ours
    upstream = {f"module.image_encoder.{k}": v for k, v in ref.state_dict().items()}
    upstream.update({f"module.{k}": v for k, v in ours.state_dict().items() if not k.startswith("image_encoder.")})
    torch.save(upstream, tmp_path / "SAMUS.pth")
    out = samus_published(str(tmp_path / "SAMUS.pth"), str(tmp_path / "models" / "model.pt"), **TINY)
    converted = samus.build_samus(**TINY).eval()
    converted.load_state_dict(torch.load(out, weights_only=True), strict=True)
    images = torch.rand(1, 1, TINY["image_size"], TINY["image_size"])
    with torch.no_grad():
        torch.testing.assert_close(converted.encode(images), ref(images), atol=1e-5, rtol=1e-4)
    with pytest.raises(CheckpointError):
        del upstream["module.image_encoder.input_Adapter.D_fc1.weight"]
        torch.save(upstream, tmp_path / "broken.pth")
        samus_published(str(tmp_path / "broken.pth"), str(tmp_path / "models" / "broken.pt"), **TINY)
    assert not (tmp_path / "models" / "broken.pt").exists()
