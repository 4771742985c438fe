from .box_propagation import BoxPropagationInferer, SliceEmbeddingCache, propagation_order
from .chunked import BatchChunkInferer
from .point_patch import PointPatchInferer

__all__ = [
    "BatchChunkInferer", "BoxPropagationInferer", "PointPatchInferer", "SliceEmbeddingCache", "propagation_order",
]
