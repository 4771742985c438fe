"""The SAMIHS polyp variant's parts: external maps as dense mask prompts, SUN-SEG and video datalists, the
mask-prompted frame inferer with propagation. Synthetic data only (SUN-SEG may not be redistributed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from common.data import sunseg
from common.data.synthetic_sunseg import PNS_MAP_SIZE, write_synthetic_sunseg
from common.errors import InputNotFoundError, InvalidInputError
from common.methods.samihs_polyp import FramePromptsd, MaskPromptFrameInferer
from common.networks import samihs
from common.transforms.mask_prompt import (
    BINARY_LOGIT,
    MaskPromptLogitsd,
    RandPerturbMaskPromptd,
    ResizeMaskPromptd,
    mask_prompt_logits,
    probability_map,
)


def test_probability_to_logit_scales():
    p = torch.tensor([0.0, 0.25, 0.5, 1.0])
    logits = mask_prompt_logits(p, "logit")
    torch.testing.assert_close(logits, torch.logit(p.clamp(1e-4, 1 - 1e-4)))
    assert float(logits[0]) == pytest.approx(-9.21, abs=0.01) and float(logits[2]) == 0.0
    torch.testing.assert_close(mask_prompt_logits(p, "binary"), torch.tensor([-10.0, -10.0, 10.0, 10.0]))
    assert float(mask_prompt_logits(p, "binary", threshold=0.2)[1]) == BINARY_LOGIT
    with pytest.raises(ValueError, match="scale"):
        mask_prompt_logits(p, "sigmoid")
    torch.testing.assert_close(probability_map(torch.tensor([0.0, 51.0, 255.0])), torch.tensor([0.0, 0.2, 1.0]))
    with pytest.raises(ValueError, match="finite"):
        probability_map(torch.tensor([float("nan")]))


def test_resize_map_of_any_size_and_missing_map():
    """A PNS+ 256 x 448 uint8 map -> probability at the prompt size (bilinear; a half-filled map stays half); a frame
    without a map -> zeros and mask_present False, which MaskPromptLogitsd leaves alone."""
    h, w = PNS_MAP_SIZE
    pns = torch.zeros(1, w, h)  # project layout (1, X, Y)
    pns[:, : w // 2] = 255.0
    out = ResizeMaskPromptd("mask_prompt", size=64)({"mask_prompt": pns})
    assert out["mask_prompt"].shape == (1, 64, 64) and bool(out["mask_present"])
    assert float(out["mask_prompt"][0, :30].min()) == 1.0 and float(out["mask_prompt"][0, 34:].max()) == 0.0
    missing = MaskPromptLogitsd("mask_prompt")(ResizeMaskPromptd("mask_prompt", size=64)({"image": 1}))
    assert not bool(missing["mask_present"]) and float(missing["mask_prompt"].abs().max()) == 0.0
    present = MaskPromptLogitsd("mask_prompt")(out)
    assert float(present["mask_prompt"].max()) > 9 and float(present["mask_prompt"].min()) < -9
    with pytest.raises(ValueError, match="one-channel"):
        ResizeMaskPromptd("mask_prompt")({"mask_prompt": torch.zeros(3, 8, 8)})


def _disc(size: int = 64, radius: int = 12) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return (((yy - 32) ** 2 + (xx - 32) ** 2) <= radius**2).float()[None]


def test_perturbation_damages_the_map_and_drops_it_at_the_rate():
    disc = _disc()
    perturb = RandPerturbMaskPromptd("mask_prompt", prob=1.0, drop_prob=0.0).set_random_state(0)
    damaged = [perturb({"mask_prompt": disc, "mask_present": torch.tensor(True)})["mask_prompt"] for _ in range(20)]
    changes = [float((d - disc).abs().sum()) for d in damaged]
    assert min(changes) > 10  # every draw changes the map (shift, morphology, boundary noise all on)
    assert all(float(d.min()) >= 0.0 and float(d.max()) <= 1.0 for d in damaged)
    assert len({round(c, 3) for c in changes}) > 10  # and differently each time
    again = RandPerturbMaskPromptd("mask_prompt", prob=1.0, drop_prob=0.0).set_random_state(0)
    torch.testing.assert_close(
        again({"mask_prompt": disc, "mask_present": torch.tensor(True)})["mask_prompt"], damaged[0]
    )
    untouched = RandPerturbMaskPromptd("mask_prompt", prob=0.0, drop_prob=0.0)({"mask_prompt": disc})
    torch.testing.assert_close(untouched["mask_prompt"], disc)
    dropper = RandPerturbMaskPromptd("mask_prompt", prob=0.0, drop_prob=0.2).set_random_state(1)
    dropped = [
        not bool(dropper({"mask_prompt": disc, "mask_present": torch.tensor(True)})["mask_present"]) for _ in range(500)
    ]
    assert 0.15 < np.mean(dropped) < 0.25


def test_sunseg_datalist_orders_frames_and_pairs_maps(tmp_path):
    root = write_synthetic_sunseg(tmp_path / "split", clips=2, frames=11, size=(24, 32), maps_dir=tmp_path / "maps")
    items = sunseg.sunseg_datalist(str(root), str(tmp_path / "maps"), require_maps=True)
    assert [i["clip"] for i in items] == ["case1"] * 11 + ["case2"] * 11
    assert [i["frame"][-4:] for i in items[:11]] == [f"{k:04d}" for k in range(1, 12)]
    assert all(i["label"].endswith(f"GT/{i['clip']}/{i['frame']}.png") for i in items)
    assert Image.open(items[0]["mask_prompt"]).size == (PNS_MAP_SIZE[1], PNS_MAP_SIZE[0])
    (tmp_path / "maps" / "case2" / f"{items[-1]['frame']}.png").unlink()
    with pytest.raises(InputNotFoundError, match="without maps"):
        sunseg.sunseg_datalist(str(root), str(tmp_path / "maps"), require_maps=True)
    partial = sunseg.sunseg_datalist(str(root), str(tmp_path / "maps"))
    assert "mask_prompt" not in partial[-1] and "mask_prompt" in partial[-2]
    split = sunseg.clip_split(items, val_fraction=0.5)
    assert {i["clip"] for i in split["training"]}.isdisjoint({i["clip"] for i in split["validation"]})
    assert len(split["training"]) == len(split["validation"]) == 11
    with pytest.raises(InvalidInputError, match="map_source"):
        sunseg.training_clips(str(root), None, "pns")
    with pytest.raises(InputNotFoundError, match="frame folder"):
        sunseg.sunseg_datalist(str(tmp_path))


def test_frame_order_follows_the_toolbox():
    names = ["case1_a10_ayy_image1.jpg", "case1_a2_ayy_image10.jpg", "case1_a2_ayy_image9.jpg", "other.jpg"]
    ordered = sorted(names, key=sunseg._frame_order)
    assert ordered == ["case1_a2_ayy_image9.jpg", "case1_a2_ayy_image10.jpg", "case1_a10_ayy_image1.jpg", "other.jpg"]


def test_datalist_lists_frames_named_otherwise_after_the_numbered_ones(tmp_path):
    root = write_synthetic_sunseg(tmp_path / "split", clips=1, frames=3, size=(24, 32))
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(root / "Frame" / "case1" / "extra.jpg")
    frames = [i["frame"] for i in sunseg.sunseg_datalist(str(root), require_labels=False)]
    assert frames == [f"case1_a1_ayy_image{k:04d}" for k in (1, 2, 3)] + ["extra"]


def test_video_frames_in_order_with_their_maps(tmp_path):
    """A video file (written with PyAV, lossless-enough mpeg4) -> one clip of numbered frames; LoadFramed decodes
    each frame forward and gives the frame's content and size; maps pair by frame name."""
    import av

    from common.data.video import LoadFramed, video_datalist

    path = tmp_path / "clip7.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        stream.options = {"qscale": "1"}
        for k in range(4):
            frame = np.full((32, 48, 3), 40 * (k + 1), np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    (tmp_path / "maps" / "clip7").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "maps" / "clip7" / "00002.png")
    items = video_datalist(str(path), str(tmp_path / "maps"))
    assert [(i["clip"], i["frame"], i["frame_index"]) for i in items] == [
        ("clip7", f"{k + 1:05d}", k) for k in range(4)
    ]
    assert [("mask_prompt" in i) for i in items] == [False, True, False, False]
    load = LoadFramed("image")
    frames = [load(i)["image"] for i in items]
    assert all(f.shape == (3, 48, 32) for f in frames)  # (3, X, Y)
    assert [round(float(f.mean())) for f in frames] == pytest.approx([40, 80, 120, 160], abs=3)
    assert str(frames[1].meta["filename_or_obj"]).endswith("00002.png")
    assert round(float(load(items[0])["image"].mean())) == pytest.approx(40, abs=3)  # going back reopens
    with pytest.raises(InvalidInputError, match="not a readable video"):
        (tmp_path / "bad.mp4").write_bytes(b"not a video")
        video_datalist(str(tmp_path / "bad.mp4"))


def test_frame_prompts_optional_and_scaled():
    image = torch.zeros(3, 100, 50)  # (3, X, Y)
    none = FramePromptsd("image", size=64)({"image": image})
    assert int(none["point_labels"].max()) == -1 and not bool(none["has_box"])
    assert none["out_size"].tolist() == [50, 100]
    clicked = FramePromptsd("image", size=64)({"image": image, "points": [[49.5, 24.5]], "boxes": [[10, 5, 60, 30]]})
    # pixel centres map to pixel centres: (x + 0.5) * 64 / X - 0.5 = (49.5 + 0.5) * 64 / 100 - 0.5
    torch.testing.assert_close(clicked["points"], torch.tensor([[31.5, 31.5]]))
    assert bool(clicked["has_box"]) and "boxes" not in clicked
    with pytest.raises(InvalidInputError, match="one box"):
        FramePromptsd("image", size=64)({"image": image, "boxes": [[0, 0, 5, 5], [6, 6, 9, 9]]})


def test_inferer_propagates_the_previous_prediction_within_a_clip():
    """With propagate, a frame without a map decodes with its clip's previous low-res logits as the prompt (equal to
    passing them by hand); a new clip starts without; without propagate it uses no_mask_embed."""
    torch.manual_seed(0)
    net = samihs.build_samihs(**samihs.TINY_SIZES).eval()
    size, m = samihs.TINY_SIZES["image_size"], net.prompt_encoder.mask_input_size[0]
    frames = torch.rand(3, 1, 3, size, size)
    prompt = torch.randn(1, 1, m, m) * 5
    absent, present = torch.tensor([False]), torch.tensor([True])
    out_size = torch.tensor([[m, m]])
    inferer = MaskPromptFrameInferer(propagate=True)
    with torch.no_grad():
        first = inferer(frames[0], net, prompt, present, out_size, clip=["a"])
        second = inferer(frames[1], net, torch.zeros_like(prompt), absent, out_size, clip=["a"])
        first_logits = net.decode(net.encode(frames[0]), mask_inputs=prompt)[0]
        by_hand = torch.sigmoid(net.decode(net.encode(frames[1]), mask_inputs=first_logits)[0])
        new_clip = inferer(frames[2], net, torch.zeros_like(prompt), absent, out_size, clip=["b"])
        no_mask = torch.sigmoid(net.decode(net.encode(frames[2]))[0])
        plain = MaskPromptFrameInferer(propagate=False)(frames[1], net, torch.zeros_like(prompt), absent, out_size)
        unprompted = torch.sigmoid(net.decode(net.encode(frames[1]))[0])
    torch.testing.assert_close(first, torch.sigmoid(first_logits), atol=1e-6, rtol=0)
    torch.testing.assert_close(second, by_hand, atol=1e-6, rtol=0)
    torch.testing.assert_close(new_clip, no_mask, atol=1e-6, rtol=0)
    torch.testing.assert_close(plain, unprompted, atol=1e-6, rtol=0)
    assert (second - plain).abs().max() > 1e-3
