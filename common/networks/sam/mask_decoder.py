"""SAM mask decoder: output tokens + two-way transformer + hypernetwork masks and IoU head."""

from __future__ import annotations

import torch
from torch import nn

from .common import MLP, LayerNorm2d

__all__ = ["MaskDecoder"]


class MaskDecoder(nn.Module):
    """Predicts masks and their IoU from an image embedding and prompt embeddings.

    Args:
        transformer_dim: token/embedding width D (256 in SAM).
        transformer: module called as ``transformer(src (B, D, h, w), pos (B, D, h, w), tokens (B, N, D))`` that
            returns ``(tokens (B, N, D), src (B, h*w, D))``, e.g. :class:`TwoWayTransformer`.
        num_multimask_outputs: masks returned when ``multimask_output=True`` (one more token is the single mask).
        iou_head_depth / iou_head_hidden_dim: IoU MLP size.
        activation: activation of the upscaling path.

    ``forward`` returns ``masks (B, M, 4h, 4w)`` logits and ``iou_pred (B, M)``, with ``M = 1`` (token 0) or
    ``M = num_multimask_outputs`` (tokens 1..). ``image_embeddings`` may have batch 1 (shared by all B prompt
    sets) or B; ``image_pe`` has batch 1 or B.
    """

    def __init__(
        self,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        sel = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sel], iou_pred[:, sel]

    def output_tokens(self) -> torch.Tensor:
        """The learned output tokens ``(1 + num_mask_tokens, D)``: IoU token, then the mask tokens (subclasses may
        append their own, e.g. HQ-SAM's HQ token)."""
        return torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)

    def prepare_inputs(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokens ``(B, 1 + num_mask_tokens + N, D)``, ``src = image + dense`` and ``pos`` ``(B, D, h, w)``."""
        b = sparse_prompt_embeddings.shape[0]
        for name, t in (
            ("image_embeddings", image_embeddings),
            ("dense_prompt_embeddings", dense_prompt_embeddings),
            ("image_pe", image_pe),
        ):
            if t.shape[0] not in (1, b):
                raise ValueError(f"{name} has batch {t.shape[0]}; expected 1 or the prompt batch {b}")
        output_tokens = self.output_tokens()
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(b, -1, -1), sparse_prompt_embeddings], dim=1)
        src = image_embeddings + dense_prompt_embeddings
        src = src.expand(b, -1, -1, -1) if src.shape[0] != b else src
        pos = image_pe.expand(b, -1, -1, -1) if image_pe.shape[0] != b else image_pe
        return tokens, src, pos

    def upscale(self, src: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """Image tokens after the transformer ``(B, h*w, D)`` -> upscaled features ``(B, D/8, 4h, 4w)``."""
        b, _, c = src.shape
        return self.output_upscaling(src.transpose(1, 2).reshape(b, c, hw[0], hw[1]))

    def masks_from_tokens(self, hs: torch.Tensor, upscaled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask logits ``(B, num_mask_tokens, 4h, 4w)`` and IoU ``(B, num_mask_tokens)`` from the transformer's
        output tokens ``hs (B, N, D)`` and the upscaled features ``(B, D/8, 4h, 4w)``."""
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        b, c_up, h_up, w_up = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c_up, h_up * w_up)).reshape(b, -1, h_up, w_up)
        return masks, self.iou_prediction_head(iou_token_out)

    def run_transformer(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Output tokens after the two-way transformer ``(B, N, D)`` and the upscaled image features
        ``(B, D/8, 4h, 4w)``."""
        tokens, src, pos = self.prepare_inputs(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        hs, src_out = self.transformer(src, pos, tokens)
        return hs, self.upscale(src_out, (src.shape[2], src.shape[3]))

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All ``num_mask_tokens`` masks ``(B, T, 4h, 4w)`` and IoU predictions ``(B, T)``."""
        hs, upscaled = self.run_transformer(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        return self.masks_from_tokens(hs, upscaled)
