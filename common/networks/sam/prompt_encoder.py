"""SAM prompt encoder: points, boxes and low-resolution masks to sparse and dense embeddings.

Coordinates are (x, y) in input-image pixels (the encoder's ``input_image_size`` frame, e.g. 0..1023), as SAM.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

from .common import LayerNorm2d

__all__ = ["PositionEmbeddingRandom", "PromptEncoder"]


class PositionEmbeddingRandom(nn.Module):
    """Random-Fourier positional encoding.

    Buffer ``positional_encoding_gaussian_matrix`` ``(2, num_pos_feats)`` ~ ``scale * N(0, 1)`` (persistent, so it
    is in the checkpoint). A point ``p`` in [0, 1]^2 (x, y) maps to ``[sin(f), cos(f)]`` with
    ``f = 2*pi * (2p - 1) @ G``, i.e. ``2 * num_pos_feats`` channels.
    """

    positional_encoding_gaussian_matrix: torch.Tensor

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        scale = 1.0 if scale is None or scale <= 0.0 else scale
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn(2, num_pos_feats))

    def _encode(self, coords: torch.Tensor) -> torch.Tensor:
        """``(..., 2)`` normalised (x, y) -> ``(..., 2 * num_pos_feats)``."""
        f = (2.0 * coords - 1.0) @ self.positional_encoding_gaussian_matrix
        f = 2.0 * math.pi * f
        return torch.cat([torch.sin(f), torch.cos(f)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of pixel centres of an ``(H, W)`` grid: ``(2 * num_pos_feats, H, W)``."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        grid = torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], dim=-1)
        return self._encode(grid).permute(2, 0, 1)

    def forward_with_coords(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Encode ``(B, N, 2)`` pixel coordinates (x, y) in an image of ``image_size = (H, W)``: ``(B, N, C)``."""
        size_xy = coords.new_tensor([float(image_size[1]), float(image_size[0])])
        return self._encode((coords / size_xy).float())


class PromptEncoder(nn.Module):
    """Embeds SAM prompts.

    Args:
        embed_dim: prompt embedding width (256 in SAM).
        image_embedding_size: ``(He, We)`` of the image embedding (64x64 for 1024 px input).
        input_image_size: ``(H, W)`` in pixels of the encoder input; point/box coordinates refer to it.
        mask_in_chans: hidden channels of the mask downscaler (16 in SAM).

    ``forward(points, boxes, masks)`` returns ``sparse (B, N, embed_dim)`` and ``dense (B, embed_dim, He, We)``:

    * points ``(coords (B, N, 2) (x, y) px, labels (B, N))``: shifted by +0.5 px to the pixel centre; labels
      1 = positive, 0 = negative, -1 = padding (``not_a_point_embed`` only, no positional encoding),
      2/3 = box top-left/bottom-right corner. When no box is given a padding point (label -1) is appended, so one
      point gives N = 2 tokens.
    * boxes ``(B, 4)`` or ``(B, K, 4)`` as ``[x0, y0, x1, y1]`` px: two corner tokens per box.
    * masks ``(B, 1, 4*He, 4*We)`` logits: downscaled to the dense embedding; without a mask the dense embedding
      is ``no_mask_embed`` everywhere. ``mask_present (B,)`` bool (optional) marks the batch items whose mask is
      real; the others get ``no_mask_embed`` (a batch mixing frames with and without a mask prompt).
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = (int(image_embedding_size[0]), int(image_embedding_size[1]))
        self.input_image_size = (int(input_image_size[0]), int(input_image_size[1]))
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.num_point_embeddings = 4  # negative, positive, box corner 1, box corner 2
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * self.image_embedding_size[0], 4 * self.image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def _point_embedding(self, index: int) -> torch.Tensor:
        """Learned embedding ``(1, embed_dim)`` of point label ``index`` (0 neg, 1 pos, 2/3 box corners)."""
        return cast(nn.Embedding, self.point_embeddings[index]).weight

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image-embedding grid: ``(1, embed_dim, He, We)``."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        points = points + 0.5
        if pad:
            points = torch.cat([points, points.new_zeros(points.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), -1)], dim=1)
        pe = self.pe_layer.forward_with_coords(points, self.input_image_size)
        lab = labels[..., None]
        emb = torch.where(lab == -1, torch.zeros_like(pe), pe)
        emb = emb + (lab == -1) * self.not_a_point_embed.weight
        for value in range(self.num_point_embeddings):
            emb = emb + (lab == value) * self._point_embedding(value)
        return emb

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        corners = (boxes + 0.5).reshape(boxes.shape[0], -1, 2)  # (B, 2K, 2)
        emb = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_embed = torch.cat([self._point_embedding(2), self._point_embedding(3)], dim=0)
        return emb + corner_embed.repeat(corners.shape[1] // 2, 1)

    def _batch_size(self, points, boxes, masks, batch_size: int | None) -> int:
        sizes = {}
        if points is not None:
            sizes["points"] = points[0].shape[0]
            if points[1].shape[:2] != points[0].shape[:2] or points[0].ndim != 3 or points[0].shape[-1] != 2:
                raise ValueError(
                    f"points must be coords (B, N, 2) and labels (B, N); got {tuple(points[0].shape)} and "
                    f"{tuple(points[1].shape)}"
                )
        if boxes is not None:
            if boxes.shape[-1] != 4 or boxes.ndim not in (2, 3):
                raise ValueError(f"boxes must be (B, 4) or (B, K, 4) [x0, y0, x1, y1]; got {tuple(boxes.shape)}")
            sizes["boxes"] = boxes.shape[0]
        if masks is not None:
            if masks.ndim != 4 or masks.shape[1] != 1 or tuple(masks.shape[2:]) != self.mask_input_size:
                raise ValueError(
                    f"mask prompts must be (B, 1, {self.mask_input_size[0]}, {self.mask_input_size[1]}) "
                    f"(4x the image embedding); got {tuple(masks.shape)}"
                )
            sizes["masks"] = masks.shape[0]
        if len(set(sizes.values())) > 1:
            raise ValueError(f"prompt batch sizes disagree: {sizes}")
        if sizes:
            return next(iter(sizes.values()))
        return 1 if batch_size is None else int(batch_size)

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        batch_size: int | None = None,
        mask_present: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse ``(B, N, embed_dim)`` and dense ``(B, embed_dim, He, We)`` embeddings (see class docstring).

        ``batch_size`` sets B only when no prompt is given (default 1).
        """
        if mask_present is not None and (masks is None or tuple(mask_present.shape) != (masks.shape[0],)):
            raise ValueError("mask_present must be (B,) and come with masks (B, 1, H, W)")
        bs = self._batch_size(points, boxes, masks, batch_size)
        weight = self.no_mask_embed.weight
        device = weight.device  # prompts may arrive on another device (e.g. CPU transforms)
        if points is not None:
            points = (points[0].to(device), points[1].to(device))
        boxes = None if boxes is None else boxes.to(device)
        masks = None if masks is None else masks.to(device=device, dtype=weight.dtype)
        sparse = [weight.new_zeros(bs, 0, self.embed_dim)]
        if points is not None:
            sparse.append(self._embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            sparse.append(self._embed_boxes(boxes))
        sparse_embeddings = torch.cat(sparse, dim=1)
        no_mask = weight.reshape(1, -1, 1, 1).expand(bs, -1, *self.image_embedding_size)
        if masks is None:
            return sparse_embeddings, no_mask
        dense = self.mask_downscaling(masks)
        if mask_present is not None:
            dense = torch.where(mask_present.to(device).reshape(-1, 1, 1, 1).bool(), dense, no_mask)
        return sparse_embeddings, dense
