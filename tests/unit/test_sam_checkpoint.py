"""Checkpoint files with the official SAM key layout (saved from segment-anything) load with strict=True."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from sam_reference import DECODER
from torch import nn

from common.networks.sam import CheckpointError, ImageEncoderViT, build_sam_vit, load_checkpoint, load_state_dict_file

sam_ref = pytest.importorskip("segment_anything.modeling")  # tests/conftest.py installs the torchvision stand-in

SIZE = 64
ENC = dict(embed_dim=32, depth=2, num_heads=2, window_size=3, global_attn_indexes=(1,))
DEC = DECODER


def ours(**enc):
    return build_sam_vit("vit_b", image_size=SIZE, **{**ENC, **enc}, **DEC).eval()


@pytest.fixture(scope="module")
def reference():
    """A segment-anything model (random weights, tiny sizes) and its outputs for one image and one box."""
    torch.manual_seed(0)
    ref = sam_ref.Sam(
        image_encoder=sam_ref.ImageEncoderViT(
            img_size=SIZE,
            patch_size=16,
            embed_dim=32,
            depth=2,
            num_heads=2,
            mlp_ratio=4,
            out_chans=32,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            qkv_bias=True,
            use_rel_pos=True,
            window_size=3,
            global_attn_indexes=(1,),
        ),
        prompt_encoder=sam_ref.PromptEncoder(
            embed_dim=32, image_embedding_size=(4, 4), input_image_size=(SIZE, SIZE), mask_in_chans=8
        ),
        mask_decoder=sam_ref.MaskDecoder(
            transformer_dim=32,
            transformer=sam_ref.TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=48, num_heads=2),
            num_multimask_outputs=3,
            iou_head_depth=3,
            iou_head_hidden_dim=24,
        ),
    ).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            large = "rel_pos" in name or "pos_embed" in name
            p.add_((0.3 if large else 0.05) * torch.randn_like(p))
    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    box = torch.tensor([[5.0, 8.0, 40.0, 50.0]])
    with torch.no_grad():
        emb = ref.image_encoder(x)
        s, d = ref.prompt_encoder(None, box, None)
        low, iou = ref.mask_decoder(emb, ref.prompt_encoder.get_dense_pe(), s, d, False)
    return ref, x, box, (emb, low, iou)


def _outputs(model, x, box):
    with torch.no_grad():
        emb = model.encode(x)
        low, iou = model.decode(emb, boxes=box)
    return emb, low, iou


@pytest.mark.parametrize("variant", ["plain", "model_wrapped", "state_dict_wrapped", "module_prefixed"])
def test_official_layout_file_loads_strict(reference, tmp_path, variant):
    ref, x, box, expected = reference
    sd = ref.state_dict()
    assert not any(k.startswith("pixel_") for k in sd)  # official files carry no pixel mean/std either
    payload = {
        "plain": sd,
        "model_wrapped": {"model": sd},
        "state_dict_wrapped": {"epoch": 7, "model": "sam", "state_dict": sd, "best_tol": 0.5},
        "module_prefixed": {f"module.{k}": v for k, v in sd.items()},
    }[variant]
    path = tmp_path / f"sam_tiny_{variant}.pth"
    torch.save(payload, path)

    loaded = load_state_dict_file(path)
    assert list(loaded) == list(sd)
    model = ours()
    result = load_checkpoint(model, path, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for key, value in model.state_dict().items():
        assert torch.equal(value, sd[key]), key
    for got, exp in zip(_outputs(model, x, box), expected):
        torch.testing.assert_close(got, exp, atol=1e-5, rtol=0)
    # the builder takes the same file
    built = build_sam_vit("vit_b", image_size=SIZE, checkpoint=path, **ENC, **DEC).eval()
    for got, exp in zip(_outputs(built, x, box), _outputs(model, x, box)):
        assert torch.equal(got, exp)


def test_prefix_loads_one_submodule(reference):
    ref, x, _, (emb, _, _) = reference
    enc = ImageEncoderViT(img_size=SIZE, out_chans=32, **ENC).eval()
    load_checkpoint(enc, ref.state_dict(), prefix="image_encoder.")
    with torch.no_grad():
        torch.testing.assert_close(enc(x), emb, atol=1e-5, rtol=0)
    with pytest.raises(CheckpointError, match="prefix 'encoder.'"):
        load_checkpoint(enc, ref.state_dict(), prefix="encoder.")


def test_key_mismatch_names_file_and_keys(reference, tmp_path):
    ref = reference[0]
    path = tmp_path / "sam_tiny.pth"
    torch.save(ref.state_dict(), path)
    # one block more than the file: missing keys of block 2
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(ours(depth=3, global_attn_indexes=(1,)), path)
    message = str(info.value)
    assert str(path) in message and "missing key" in message and "image_encoder.blocks.2.norm1.weight" in message
    # extra keys in the file
    sd = {**ref.state_dict(), "mask_decoder.hq_token.weight": torch.zeros(1, 32)}
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"(?s)unexpected key.*mask_decoder\.hq_token\.weight"):
        load_checkpoint(ours(), path)
    # non-strict returns the extra key but still loads the rest
    result = load_checkpoint(ours(), path, strict=False)
    assert result.unexpected_keys == ["mask_decoder.hq_token.weight"]
    # shape mismatch (window 5 -> rel-pos tables of 9 rows instead of 5) is an error even when not strict
    expected = r"(?s)shape mismatch.*rel_pos_h: checkpoint \(5, 16\) vs model \(9, 16\)"
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(ours(window_size=5), ref.state_dict(), strict=False)


def test_missing_file_raises_with_hint(tmp_path):
    path = tmp_path / "nope" / "sam_vit_b_01ec64.pth"
    hint = "Download sam_vit_b_01ec64.pth from the segment-anything release page into models/."
    with pytest.raises(FileNotFoundError) as info:
        load_checkpoint(ours(), path, hint=hint)
    assert str(path) in str(info.value) and hint in str(info.value)
    with pytest.raises(FileNotFoundError, match="sam_vit_b_01ec64"):
        build_sam_vit("vit_b", device="meta", checkpoint=path, checkpoint_hint=hint)


class _NotAWeight:
    pass


def test_not_a_state_dict(tmp_path):
    cases = {"list.pth": [torch.zeros(1)], "meta_only.pth": {"epoch": 3, "optimizer": {"lr": 0.1}}, "empty.pth": {}}
    for name, obj in cases.items():
        path = tmp_path / name
        torch.save(obj, path)
        with pytest.raises(CheckpointError, match=name):
            load_checkpoint(ours(), path)
    pickled = tmp_path / "pickled_object.pth"
    torch.save({"model": _NotAWeight()}, pickled)
    with pytest.raises(CheckpointError, match="loading it would run code.*_NotAWeight"):
        load_state_dict_file(pickled)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        load_state_dict_file(garbage)
    with pytest.raises(TypeError):
        load_checkpoint(ours(), 42)


def test_weights_holding_nan_or_inf_are_refused_naming_the_tensor(tmp_path):
    state = ours().state_dict()
    first_float = next(k for k, v in state.items() if v.is_floating_point())
    bad = {k: v.clone() for k, v in state.items()}
    bad[first_float].view(-1)[:3] = float("nan")
    bad[first_float].view(-1)[3] = float("inf")
    torch.save(bad, tmp_path / "diverged.pt")
    with pytest.raises(
        CheckpointError, match=rf"diverged.pt: 4 NaN/infinite value\(s\) in 1 tensor\(s\), first '{first_float}'"
    ):
        load_state_dict_file(tmp_path / "diverged.pt")
    torch.save(state, tmp_path / "fine.pt")
    assert load_state_dict_file(tmp_path / "fine.pt").keys() == state.keys()


@pytest.mark.parametrize("writer", ["numpy.core.multiarray", "numpy._core.multiarray"])
def test_numpy_scalars_load_whichever_numpy_wrote_them(tmp_path, writer):
    """The authors' training checkpoints hold numpy scalars (e.g. 3DSAM-adapter's ``best_val_loss``), pickled under
    the name of the numpy that wrote them: numpy 1 spells the reconstructor ``numpy.core.multiarray.scalar``, numpy 2
    ``numpy._core.multiarray.scalar``. Both load weights-only, under either numpy here."""
    import zipfile

    import numpy as np

    from common.networks.sam.checkpoint import torch_load_weights

    written = tmp_path / "written.pt"
    torch.save({"state_dict": {"w": torch.arange(3.0)}, "best_val_loss": np.float64(0.25)}, written)
    renamed = tmp_path / "renamed.pt"
    with zipfile.ZipFile(written) as source, zipfile.ZipFile(renamed, "w", zipfile.ZIP_STORED) as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith("/data.pkl"):
                spelled = [
                    m for m in ("numpy._core.multiarray", "numpy.core.multiarray") if f"c{m}\nscalar".encode() in data
                ]
                assert spelled, "the pickle names no numpy scalar reconstructor"
                data = data.replace(f"c{spelled[0]}\nscalar".encode(), f"c{writer}\nscalar".encode())
                assert f"c{writer}\nscalar".encode() in data
            target.writestr(item, data)
    loaded = torch_load_weights(renamed)
    assert float(loaded["best_val_loss"]) == 0.25
    torch.testing.assert_close(loaded["state_dict"]["w"], torch.arange(3.0))
