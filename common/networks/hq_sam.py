"""HQ-SAM's high-quality output token (Ke et al., arXiv 2306.01567) as a mask decoder on the SAM core.

:class:`HQMaskDecoder` is SAM's :class:`~common.networks.sam.MaskDecoder` plus the HQ token, its hypernetwork MLP
and the global-local fusion of an early encoder feature (the first global block's output), the final image
embedding and the decoder's own upscaled feature (spec: samus_hq_samihs_medsam.md section 2). Key names are
HQ-SAM's (``hf_token``, ``hf_mlp.layers.{0,1,2}``, ``compress_vit_feat.{0,1,3}``, ``embedding_encoder.{0,1,3}``,
``embedding_maskfeature.{0,1,3}``), so HQ-SAM's merged checkpoints load. Default PyTorch init, as published.
With transformer width 256 and ViT-B (``vit_dim=768``) the HQ modules have 1,071,104 parameters.

The HQ features are computed per image from batch-aligned (or shared, batch 1) embeddings and added without
repeating them per prompt: HQ-SAM's inference decoder repeats them and fails on batch-aligned embeddings
(addendum 3.3 item 9).
"""

from __future__ import annotations

import torch
from torch import nn

from common.networks.sam import MLP, LayerNorm2d, MaskDecoder

__all__ = ["HQ_MODULES", "HQMaskDecoder"]

#: Names of the modules HQ-SAM adds to SAM's mask decoder (state-dict prefixes under ``mask_decoder.``).
HQ_MODULES = ("hf_token", "hf_mlp", "compress_vit_feat", "embedding_encoder", "embedding_maskfeature")


def _upsample_x4(c_in: int, c_mid: int, c_out: int) -> nn.Sequential:
    """ConvT 2x2/2 -> LayerNorm2d -> GELU -> ConvT 2x2/2: ``(B, c_in, h, w) -> (B, c_out, 4h, 4w)``."""
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_mid, kernel_size=2, stride=2),
        LayerNorm2d(c_mid),
        nn.GELU(),
        nn.ConvTranspose2d(c_mid, c_out, kernel_size=2, stride=2),
    )


class HQMaskDecoder(MaskDecoder):
    """SAM mask decoder with HQ-SAM's HQ output token.

    Args:
        transformer_dim / transformer / num_multimask_outputs / iou_head_depth / iou_head_hidden_dim: as
            :class:`MaskDecoder`.
        vit_dim: channels of the early encoder feature (768 for ViT-B).
        hq_token_only: return only the HQ mask; otherwise the sum of the SAM mask logits and the HQ mask logits
            (HQ-SAM's two outputs). HQ-SAM's advice: HQ-only for single objects and after task fine-tuning.

    ``forward(image_embeddings (Bi, D, h, w), image_pe, sparse (B, N, D), dense (B, D, h, w), multimask_output,
    early_features (Bi, h, w, vit_dim))`` -> ``masks (B, 1, 4h, 4w)`` logits and ``iou_pred (B, 1)``, ``Bi`` = 1 or
    B. The SAM mask is token 0, or with ``multimask_output`` the ambiguity mask with the highest predicted IoU.
    """

    def __init__(
        self,
        transformer_dim: int,
        transformer: nn.Module,
        vit_dim: int,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        hq_token_only: bool = False,
    ) -> None:
        super().__init__(transformer_dim, transformer, num_multimask_outputs, iou_head_depth, iou_head_hidden_dim)
        t = transformer_dim
        self.vit_dim = vit_dim
        self.hq_token_only = hq_token_only
        self.hf_token = nn.Embedding(1, t)
        self.hf_mlp = MLP(t, t, t // 8, 3)
        self.compress_vit_feat = _upsample_x4(vit_dim, t, t // 8)
        self.embedding_encoder = _upsample_x4(t, t // 4, t // 8)
        self.embedding_maskfeature = nn.Sequential(
            nn.Conv2d(t // 8, t // 4, kernel_size=3, padding=1),
            LayerNorm2d(t // 4),
            nn.GELU(),
            nn.Conv2d(t // 4, t // 8, kernel_size=3, padding=1),
        )

    def output_tokens(self) -> torch.Tensor:
        """IoU token, mask tokens, then the HQ token: ``(2 + num_mask_tokens, D)``."""
        return torch.cat([super().output_tokens(), self.hf_token.weight], dim=0)

    def hq_features(self, image_embeddings: torch.Tensor, early_features: torch.Tensor) -> torch.Tensor:
        """Global-local fusion ``(Bi, D/8, 4h, 4w)`` of the final embedding and the early feature (BHWC)."""
        if early_features.ndim != 4 or early_features.shape[-1] != self.vit_dim:
            raise ValueError(
                f"early_features must be (B, h, w, {self.vit_dim}) channels-last; got {tuple(early_features.shape)}"
            )
        early = self.compress_vit_feat(early_features.permute(0, 3, 1, 2))
        return self.embedding_encoder(image_embeddings) + early

    # Takes one more input than MaskDecoder.forward (the early features): a different call by design.
    def forward(  # type: ignore[override]
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        early_features: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hs, upscaled = self.run_transformer(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        masks, iou = self.masks_from_tokens(hs, upscaled)
        if multimask_output:
            best = iou[:, 1:].argmax(dim=1)
            rows = torch.arange(masks.shape[0], device=masks.device)
            sam_mask, sam_iou = masks[rows, 1 + best][:, None], iou[rows, 1 + best][:, None]
        else:
            sam_mask, sam_iou = masks[:, :1], iou[:, :1]
        hq_upscaled = self.embedding_maskfeature(upscaled) + self.hq_features(image_embeddings, early_features)
        hq_hyper = self.hf_mlp(hs[:, 1 + self.num_mask_tokens])  # (B, D/8)
        b, c_up, h_up, w_up = upscaled.shape
        hq_mask = (hq_hyper[:, None, :] @ hq_upscaled.reshape(-1, c_up, h_up * w_up)).reshape(b, 1, h_up, w_up)
        return (hq_mask if self.hq_token_only else sam_mask + hq_mask), sam_iou
