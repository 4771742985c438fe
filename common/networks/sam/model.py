"""SAM container: image encoder + prompt encoder + mask decoder (official checkpoint key layout)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder

__all__ = ["GreySam", "Sam", "grey_to_rgb"]


class Sam(nn.Module):
    """Segment Anything model.

    Submodules are named ``image_encoder``, ``prompt_encoder`` and ``mask_decoder`` so official checkpoints
    load with ``strict=True``. No pixel normalisation, resizing, padding or axis change happens inside: callers
    apply the SAM input contract of :mod:`common.transforms.sam_input` (MedSAM/LiteMedSAM/SAMUS/SAMIHS: [0, 1],
    ``"unit"``; original SAM and MSA: ``"imagenet"``) and feed images at the encoder's size. Subclasses that take
    other inputs (``MSAVolume``: volumes and click maps) apply those rules in their ``forward`` and say so.
    """

    mask_threshold: float = 0.0

    def __init__(self, image_encoder: nn.Module, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder: PromptEncoder = prompt_encoder
        self.mask_decoder: MaskDecoder = mask_decoder

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` in pixels of the encoder input; prompt coordinates refer to this frame."""
        h, w = self.prompt_encoder.input_image_size
        return (h, w)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Image embeddings: ``(B, C, S, S)`` float -> ``(B, D, He, We)`` (e.g. ``(B, 256, 64, 64)`` at 1024 px)."""
        return self.image_encoder(images)

    def decode(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
        multimask_output: bool = False,
        decoder_inputs: Mapping[str, Any] | None = None,
        mask_present: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks for prompts on precomputed embeddings.

        Args:
            image_embeddings: ``(Bi, D, He, We)``; ``Bi`` is 1 (shared by all prompt sets) or the prompt batch B.
            point_coords: ``(B, N, 2)`` (x, y) in input-image pixels; point_labels: ``(B, N)`` (1 fg, 0 bg, -1 pad).
            boxes: ``(B, 4)`` or ``(B, 1, 4)`` ``[x0, y0, x1, y1]`` in input-image pixels.
            mask_inputs: ``(B, 1, 4He, 4We)`` dense mask prompt in logit scale (SAM was trained on its own previous
                low-res logits; background must be negative, not 0): replaces ``no_mask_embed`` through
                ``mask_downscaling``. May be the only prompt.
            mask_present: ``(B,)`` bool with ``mask_inputs``: items whose mask is absent get ``no_mask_embed``.
            multimask_output: return the 3 ambiguity masks instead of the single-mask token.
            decoder_inputs: further keyword inputs of the mask decoder (e.g. HQ-SAM's early encoder features).

        Returns:
            ``low_res_logits (B, M, 4He, 4We)`` and ``iou_predictions (B, M)``, ``M`` = 1 or 3. Without any prompt
            ``B = Bi``.
        """
        if (point_coords is None) != (point_labels is None):
            raise ValueError("point_coords and point_labels must be given together")
        if image_embeddings.ndim != 4 or tuple(image_embeddings.shape[2:]) != tuple(
            self.prompt_encoder.image_embedding_size
        ):
            raise ValueError(
                f"image_embeddings must be (B, D, {self.prompt_encoder.image_embedding_size[0]}, "
                f"{self.prompt_encoder.image_embedding_size[1]}); got {tuple(image_embeddings.shape)}"
            )
        points = None if point_coords is None else (point_coords, point_labels)
        sparse, dense = self.prompt_encoder(
            points=points,
            boxes=boxes,
            masks=mask_inputs,
            batch_size=image_embeddings.shape[0],
            mask_present=mask_present,
        )
        return self.mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            **(decoder_inputs or {}),
        )

    def forward(
        self,
        images: torch.Tensor,
        boxes: torch.Tensor | None = None,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        multimask_output: bool = False,
        return_iou: bool = False,
        mask_inputs: torch.Tensor | None = None,
        mask_present: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Encode ``images (B, C, S, S)`` and decode the prompts (as :meth:`decode`, ``mask_inputs`` being dense
        mask prompts ``(B, 1, 4S/p, 4S/p)`` in logit scale, ``mask_present`` which of them are real):
        ``low_res_logits (B, M, 4S/p, 4S/p)`` (``(B, 1, 256, 256)`` for 1024 px, patch 16); with ``return_iou``
        also ``iou_predictions (B, M)`` (training the IoU head goes through ``forward`` so DistributedDataParallel
        sees it)."""
        embeddings = self.encode(images)
        low_res, iou = self.decode(
            embeddings,
            point_coords=point_coords,
            point_labels=point_labels,
            boxes=boxes,
            mask_inputs=mask_inputs,
            multimask_output=multimask_output,
            mask_present=mask_present,
        )
        return (low_res, iou) if return_iou else low_res


def grey_to_rgb(images: torch.Tensor) -> torch.Tensor:
    """Grey ``(B, 1, S, S)`` repeated to 3 channels (SAMUS and SAMIHS do it inside their encoders); 3 pass."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images (B, 1 or 3, S, S) in [0, 1], got {tuple(images.shape)}")
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


class GreySam(Sam):
    """:class:`Sam` for grey [0, 1] images ``(B, 1 or 3, S, S)`` (SAMUS, SAMIHS: ``"unit"`` pixels, repeated to 3
    channels), with a switch for box prompts.

    ``use_boxes=False`` reproduces SAMUS's and SAMIHS's published forward, which drops box prompts (only clicks, or
    a dense mask, reach the prompt encoder); by default boxes given to :meth:`decode` / :meth:`forward` are used.
    """

    def __init__(self, *args, use_boxes: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.use_boxes = use_boxes

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(grey_to_rgb(images))

    def decode(self, image_embeddings, point_coords=None, point_labels=None, boxes=None, **kwargs):
        if not self.use_boxes:
            if point_coords is None and kwargs.get("mask_inputs") is None:
                raise ValueError("use_boxes=False (the published code) ignores box prompts; give clicks")
            boxes = None
        return super().decode(image_embeddings, point_coords, point_labels, boxes, **kwargs)
