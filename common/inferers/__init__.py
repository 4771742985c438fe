from .box_propagation import BoxPropagationInferer, SliceEmbeddingCache, propagation_order
from .chunked import BatchChunkInferer

__all__ = ["BatchChunkInferer", "BoxPropagationInferer", "SliceEmbeddingCache", "propagation_order"]
