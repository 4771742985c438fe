from .box_propagation import BoxPropagationInferer, SliceEmbeddingCache, propagation_order
from .chunked import BatchChunkInferer
from .point_patch import PointPatchInferer
from .probability import ForegroundProbabilitySlidingWindowInferer
from .structure_clicks import PerStructureSlidingWindowInferer

__all__ = [
    "BatchChunkInferer",
    "BoxPropagationInferer",
    "ForegroundProbabilitySlidingWindowInferer",
    "PerStructureSlidingWindowInferer",
    "PointPatchInferer",
    "SliceEmbeddingCache",
    "propagation_order",
]
