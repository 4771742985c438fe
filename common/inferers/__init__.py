from .box_propagation import BoxPropagationInferer, SliceEmbeddingCache, propagation_order

__all__ = ["BoxPropagationInferer", "SliceEmbeddingCache", "propagation_order"]
