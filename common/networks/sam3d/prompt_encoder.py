"""3DSAM-adapter prompt encoder: the "visual sampler" with learned global queries (spec: 3dsam_msa.md A3).

Points carry no label and no positional encoding: each point's embedding is the image feature sampled at the point
(trilinear ``grid_sample``); per layer, learned global queries attend jointly with the point embeddings, and the
image tokens then attend to the global queries only.

Key layout (the published ``feature_dict[3]`` minus ``positional_encoding_gaussian_matrix``, a random buffer the
published forward never reads): ``transformer.layers.{i}.{self_attn,cross_attn_token_to_image,
cross_attn_image_to_token}.{q,k,v,out}_proj.*``, ``.norm{1..4}.*``, ``.mlp.{lin1,lin2}.*``, ``.global_query``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..sam.common import MLPBlock
from ..sam.transformer import Attention

__all__ = ["GlobalQueryBlock", "GlobalQueryTransformer", "VisualSamplerPromptEncoder", "sample_point_features"]


def sample_point_features(features: torch.Tensor, points: torch.Tensor, crop_size) -> torch.Tensor:
    """Trilinear samples of ``features (B, C, H', W', D')`` at ``points (B, N, 3)`` -> ``(B, N, C)``.

    ``points`` are voxel indices ``(d, w, h)`` of the ``crop_size = (D, H, W)`` crop the features were computed
    from; ``(p + 0.5) / size * 2 - 1`` puts them on ``grid_sample``'s ``align_corners=False`` scale, where the
    last grid column indexes D', the middle W' and the first H'. Points outside the crop get zeros.
    """
    d, h, w = crop_size
    size = points.new_tensor([d, w, h])
    grid = (points + 0.5) / size * 2 - 1
    sampled = F.grid_sample(
        features, grid[:, None, None], mode="bilinear", padding_mode="zeros", align_corners=False
    )  # (B, C, 1, 1, N)
    return sampled[:, :, 0, 0].transpose(1, 2)


class GlobalQueryBlock(nn.Module):
    """One layer: self-attention over ``[global queries; point tokens]``, MLP on the global queries, and image
    tokens attending to the global queries (post-norm).

    ``forward(image (B, T, dim), points (B, N, dim)) -> (image, points)``. ``cross_attn_token_to_image`` is
    built but never called, as published (it holds 131,712 of the 1,582,080 parameters at dim 256): keeping it
    lets published checkpoints load strictly and the trainable count match the paper's 25.46 M.
    """

    def __init__(
        self,
        dim: int = 256,
        num_heads: int = 8,
        mlp_dim: int = 2048,
        num_queries: int = 10,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, num_heads, attention_downsample_rate)
        self.global_query = nn.Parameter(0.1 * torch.randn(1, num_queries, dim))

    def forward(self, image: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n_queries = self.global_query.shape[1]
        q = torch.cat([self.global_query.expand(points.shape[0], -1, -1), points], dim=1)
        q = self.norm2(q + self.norm1(self.self_attn(q, q, q)))
        queries, points = q[:, :n_queries], q[:, n_queries:]
        queries = self.norm3(queries + self.mlp(queries))
        image = self.norm4(image + self.cross_attn_image_to_token(image, queries, queries))
        return image, points


class GlobalQueryTransformer(nn.Module):
    """``depth`` :class:`GlobalQueryBlock` layers under ``layers.{i}``."""

    def __init__(
        self, depth: int = 2, dim: int = 256, num_heads: int = 8, mlp_dim: int = 2048, num_queries: int = 10
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(GlobalQueryBlock(dim, num_heads, mlp_dim, num_queries) for _ in range(depth))

    def forward(self, image: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            image, points = layer(image, points)
        return image


class VisualSamplerPromptEncoder(nn.Module):
    """Prompt encoder of the 3DSAM-adapter: ``forward(features (B, dim, H', W', D'), points (B, N, 3) as (d, w, h)
    crop voxel indices, crop_size (D, H, W)) -> prompted features (B, dim, H', W', D')``.

    The published model builds four of these (one per feature level) but only ever calls the one on the last
    level; only that one is built here (3,164,160 parameters at the published sizes).
    """

    def __init__(
        self, dim: int = 256, depth: int = 2, num_heads: int = 8, mlp_dim: int = 2048, num_queries: int = 10
    ) -> None:
        super().__init__()
        self.transformer = GlobalQueryTransformer(depth, dim, num_heads, mlp_dim, num_queries)

    def forward(self, features: torch.Tensor, points: torch.Tensor, crop_size) -> torch.Tensor:
        point_tokens = sample_point_features(features, points, crop_size)
        b, c, h, w, d = features.shape
        image = self.transformer(features.flatten(2).transpose(1, 2), point_tokens)
        return image.transpose(1, 2).reshape(b, c, h, w, d)
