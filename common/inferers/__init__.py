from .box_propagation import BoxPropagationInferer, SliceEmbeddingCache, propagation_order
from .chunked import BatchChunkInferer
from .point_patch import PointPatchInferer
from .probability import ForegroundProbabilitySlidingWindowInferer

__all__ = [
    "BatchChunkInferer", "BoxPropagationInferer", "ForegroundProbabilitySlidingWindowInferer", "PointPatchInferer",
    "SliceEmbeddingCache", "propagation_order",
]
