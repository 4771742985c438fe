"""Decoder-only training: the frozen, cached encoder stays in eval mode (TinyViT has BatchNorm)."""

import torch

from common.networks.medsam import build_lite_medsam, with_cached_encoder


def test_cached_encoder_stays_in_eval_mode_and_keeps_its_statistics():
    torch.manual_seed(0)
    base = build_lite_medsam()
    cached = with_cached_encoder(base).train()
    assert cached.training and cached.mask_decoder.training
    assert not any(m.training for m in cached.image_encoder.modules())
    buffers = {k: v.clone() for k, v in cached.image_encoder.state_dict().items()}
    images = torch.rand(2, 3, 256, 256)
    embeddings = cached.encode(images)
    assert all(torch.equal(buffers[k], v) for k, v in cached.image_encoder.state_dict().items())
    with torch.no_grad():  # what the cache holds is the eval-mode embedding of each image on its own
        torch.testing.assert_close(embeddings[1:], base.image_encoder.eval()(images[1:]), atol=1e-4, rtol=1e-4)
