"""The OpenVINO encoder backend (``common.networks.openvino_encoder``): float32 logits of every family it runs
within 1e-4 of torch's, encoders that fill a context refused, the on-disk cache keyed by the weights and the input
shape, backend names resolved per device, and the embedding caches on top of ``encode`` still reusing embeddings
(random weights, tiny networks; real weights and real slices: ``tests/real/test_openvino_masks.py``)."""

from __future__ import annotations

import logging

import pytest
import torch
from network_families import FAMILIES, randomised

from common.label.cache import cache_image_embeddings
from common.networks import openvino_encoder
from common.networks.openvino_encoder import OpenVINOEncoder, resolve_backend, set_encoder_backend
from common.networks.samihs import TINY_SIZES as SAMIHS_TINY
from common.networks.samihs import build_samihs

RUNS_ON_OPENVINO = ["litemedsam (TinyViT)", "samihs", "msa", "3dsam-adapter (3-D encoder)"]
CONTEXT_ENCODERS = ["samus", "hq-samus"]


@pytest.mark.parametrize("family", RUNS_ON_OPENVINO)
def test_float32_logits_match_torch_and_switch_back(family, openvino_required):
    build, logits_of = FAMILIES[family]
    torch.manual_seed(0)
    network = randomised(build())
    with torch.no_grad():
        reference = logits_of(network)
        assert set_encoder_backend(network, "openvino", "float32") == "openvino"
        converted = logits_of(network)
        stand_in = network.image_encoder.forward
        assert isinstance(stand_in, OpenVINOEncoder) and stand_in.conversions == 1 and stand_in.compiled
        assert set_encoder_backend(network, "torch") == "torch"
        again = logits_of(network)
    assert converted.shape == reference.shape and converted.dtype == torch.float32
    difference = (converted - reference).abs().max().item()
    assert 0 < difference < 1e-4, f"{family}: max abs {difference:.2e}"  # > 0: OpenVINO computed it
    torch.testing.assert_close(again, reference, rtol=0, atol=0)


@pytest.mark.parametrize("family", CONTEXT_ENCODERS)
def test_encoders_that_fill_a_context_are_refused(family, openvino_required):
    build, logits_of = FAMILIES[family]
    network = randomised(build())
    set_encoder_backend(network, "openvino")
    with pytest.raises(ValueError, match=r"samus_cnn.*use 'torch'"), torch.no_grad():
        logits_of(network)


def _tiny_encoder():
    torch.manual_seed(0)
    return randomised(build_samihs(**SAMIHS_TINY)).image_encoder


def test_cache_is_keyed_by_weights_and_input_shape(tmp_path, caplog, openvino_required):
    encoder = _tiny_encoder()
    size = SAMIHS_TINY["image_size"]
    one, two = torch.rand(1, 3, size, size), torch.rand(2, 3, size, size)
    with torch.no_grad():
        first = OpenVINOEncoder(encoder, "float32", str(tmp_path))
        out = first(one)
        files = sorted(p.name for p in tmp_path.iterdir())
        digest = openvino_encoder.weights_sha256(encoder)[:16]
        assert files == [f"ImageEncoderViT-{digest}-1x3x{size}x{size}.{ext}" for ext in ("bin", "xml")]

        # a later process (a new stand-in) reads the file: no conversion, same output
        second = OpenVINOEncoder(encoder, "float32", str(tmp_path))
        torch.testing.assert_close(second(one), out, rtol=0, atol=0)
        assert second.conversions == 0

        # another input shape: another file
        second(two)
        assert second.conversions == 1 and len(list(tmp_path.glob("*.xml"))) == 2

        # new weights (reloaded in place): refresh() drops the compiled models, a new file follows the new hash
        original_bias = encoder.patch_embed.proj.bias.clone()
        encoder.patch_embed.proj.bias.add_(0.5)
        second.refresh()
        changed = second(one)
        assert second.conversions == 2 and len(list(tmp_path.glob("*.xml"))) == 3
        torch.testing.assert_close(changed, type(encoder).forward(encoder, one), rtol=0, atol=1e-4)
        assert not torch.allclose(changed, out, atol=1e-3)

        # a damaged cached file is converted again (and replaced), with a warning
        damaged = tmp_path / f"ImageEncoderViT-{digest}-1x3x{size}x{size}.xml"
        encoder.patch_embed.proj.bias.copy_(original_bias)
        damaged.write_text("<net")
        with caplog.at_level(logging.WARNING):
            third = OpenVINOEncoder(encoder, "float32", str(tmp_path))
            torch.testing.assert_close(third(one), out, rtol=0, atol=1e-5)
        assert third.conversions == 1 and "converting again" in caplog.text
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_unwritable_cache_keeps_the_model_in_memory(tmp_path, caplog, openvino_required):
    blocker = tmp_path / "file"
    blocker.write_text("")
    encoder = OpenVINOEncoder(_tiny_encoder(), "float32", str(blocker / "openvino"))  # its parent is a file
    size = SAMIHS_TINY["image_size"]
    with caplog.at_level(logging.WARNING), torch.no_grad():
        assert encoder(torch.rand(1, 3, size, size)).shape[0] == 1
    assert "keeping it in memory" in caplog.text


def test_asking_again_keeps_the_compiled_model_and_embedding_caches_still_reuse(tmp_path, openvino_required):
    torch.manual_seed(0)
    network = randomised(build_samihs(**SAMIHS_TINY))
    set_encoder_backend(network, "openvino", "float32", str(tmp_path))
    stand_in = network.image_encoder.forward
    cache = cache_image_embeddings(network, 2**20)  # what the MONAI Label task puts on top of encode
    size = SAMIHS_TINY["image_size"]
    image = torch.rand(1, 1, size, size)
    with torch.no_grad():
        first = network.encode(image)
        set_encoder_backend(network, "openvino", "float32", str(tmp_path))  # MONAI Label: on every request
        second = network.encode(image)
    assert network.image_encoder.forward is stand_in and stand_in.conversions == 1
    assert (cache.hits, cache.misses) == (1, 1)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_backend_names(monkeypatch):
    monkeypatch.setattr(openvino_encoder, "openvino_installed", lambda: True)
    assert resolve_backend("auto", "cpu") == "openvino" and resolve_backend("auto", "cuda") == "torch"
    with pytest.raises(ValueError, match="runs on the CPU; the network is on cuda"):
        resolve_backend("openvino", "cuda")
    monkeypatch.setattr(openvino_encoder, "openvino_installed", lambda: False)
    assert resolve_backend("auto", "cpu") == "torch" and resolve_backend("torch", "cpu") == "torch"
    with pytest.raises(ValueError, match=r'OpenVINO is not installed; install it with: pip install -e ".\[openvino\]"'):
        resolve_backend("openvino", "cpu")
    with pytest.raises(ValueError, match="encoder_backend must be one of torch, openvino, auto, got 'onnx'"):
        set_encoder_backend(torch.nn.Linear(2, 2), "onnx")
    with pytest.raises(ValueError, match="OpenVINO precision must be 'float32' or 'bf16'"):
        OpenVINOEncoder(torch.nn.Linear(2, 2), "fp16")
