"""SAM's two-way transformer (prompt tokens <-> image tokens), attention via SDPA.

Key layout as in the official checkpoints (under ``mask_decoder.transformer.``): ``layers.{i}.self_attn``,
``layers.{i}.cross_attn_token_to_image``, ``layers.{i}.cross_attn_image_to_token`` (each
``{q,k,v,out}_proj``), ``layers.{i}.norm{1..4}``, ``layers.{i}.mlp.lin{1,2}``, ``final_attn_token_to_image``,
``norm_final_attn``. MONAI's ``CrossAttentionBlock`` uses other parameter names and no internal downsampling,
so it does not load these weights. Decoder adapters placed with :meth:`TwoWayAttentionBlock.set_adapter` appear under
``layers.{i}.adapters.{slot}.*``; unused slots add no keys.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLPBlock
from .slots import AdapterSlots

__all__ = ["DECODER_ADAPTER_SLOTS", "Attention", "TwoWayAttentionBlock", "TwoWayTransformer"]

#: Adapter slots of :class:`TwoWayAttentionBlock` (the three places of Medical SAM Adapter's decoder adapters).
DECODER_ADAPTER_SLOTS: dict[str, str] = {
    "after_token_to_image": "serial",
    "parallel_mlp": "parallel",
    "after_image_to_token": "serial",
}


class Attention(nn.Module):
    """Multi-head attention whose q/k/v are projected to ``embedding_dim // downsample_rate`` channels.

    ``forward(q (B, Nq, D), k (B, Nk, D), v (B, Nk, D)) -> (B, Nq, D)``.
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError(f"num_heads {num_heads} must divide the internal dim {self.internal_dim}")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(
            self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        )
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.internal_dim))


class TwoWayAttentionBlock(AdapterSlots):
    """Token self-attention, token->image cross-attention, token MLP, image->token cross-attention (post-norm).

    ``forward(queries (B, Nq, D), keys (B, Nk, D), query_pe, key_pe, context=None) -> (queries, keys)``. The first
    block of the transformer skips the positional encoding in its self-attention and its residual.
    ``efficientsam_self_attention`` (the EfficientSAM-style block of Medical SAM Adapter's code since January 2024,
    same parameters, a different function): ``q = q + q_pe`` (skipped in the first block), then
    ``q = norm1(q + self_attn(q, q, q))``: the encoding enters the stream itself, and every block has the residual.

    Adapter slots (:data:`DECODER_ADAPTER_SLOTS`, set with :meth:`set_adapter`; conventions of
    :mod:`common.networks.sam.slots`)::

        q = norm1(q + self_attn(q + q_pe, q + q_pe, q))
        q = norm2(q + after_token_to_image(cross_attn_token_to_image(q + q_pe, k + k_pe, k)))   # serial
        q = norm3(q + mlp(q) + scale * parallel_mlp(q))                                       # parallel
        k = norm4(after_image_to_token(k + cross_attn_image_to_token(k + k_pe, q + q_pe, q)))  # serial

    A prompt-conditioned module (``uses_context``) finds the block's prompt tokens, ``(B, Nq, D)`` (output tokens
    then sparse prompt embeddings, the transformer's ``point_embedding``), in ``context["prompt_tokens"]``.
    """

    SLOTS = DECODER_ADAPTER_SLOTS

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
        efficientsam_self_attention: bool = False,
    ) -> None:
        super().__init__()
        self.efficientsam_self_attention = efficientsam_self_attention
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        context: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.efficientsam_self_attention:  # the positional encoding joins the stream; a residual in every layer
            if not self.skip_first_layer_pe:
                queries = queries + query_pe
            queries = queries + self.self_attn(queries, queries, queries)
        elif self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        q = queries + query_pe
        k = keys + key_pe
        attn = self._serial("after_token_to_image", self.cross_attn_token_to_image(q, k, keys), context)
        queries = self.norm2(queries + attn)
        queries = self.norm3(queries + self._parallel("parallel_mlp", queries, self.mlp(queries), context))

        q = queries + query_pe
        keys = keys + self.cross_attn_image_to_token(k, q, queries)
        keys = self.norm4(self._serial("after_image_to_token", keys, context))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """Stack of :class:`TwoWayAttentionBlock` plus a final token->image attention.

    ``forward(image_embedding (B, D, h, w), image_pe (B, D, h, w), point_embedding (B, N, D))`` returns
    ``(queries (B, N, D), keys (B, h*w, D))``. Every layer gets ``context = {"prompt_tokens": point_embedding}``
    for its prompt-conditioned adapters.

    ``efficientsam_self_attention``: every block's self-attention as :class:`TwoWayAttentionBlock` describes.
    """

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        efficientsam_self_attention: bool = False,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim,
                num_heads,
                mlp_dim=mlp_dim,
                activation=activation,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
                efficientsam_self_attention=efficientsam_self_attention,
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor, point_embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        context = {"prompt_tokens": point_embedding}
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe, context)
        q = queries + point_embedding
        k = keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys
