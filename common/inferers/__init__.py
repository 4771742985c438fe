"""Prompted inference: what each inferer returns, in one place.

=========================================  ==================================================================
inferer                                    output
=========================================  ==================================================================
``BoxPropagationInferer`` (MedSAM)         **labels**: int64 label map ``(B, 1, X, Y[, Z])``, or binary float
                                           channels ``(B, L, ...)`` with ``output="channels"``. It must
                                           threshold (logit > 0) on every slice: the next slice's box prompt
                                           comes from the previous slice's binary mask.
``PointPatchInferer`` (3DSAM-adapter)      **probabilities**: softmax foreground ``(B, K, X, Y, Z)`` in [0, 1],
                                           one channel per point protocol, 0 outside the patch.
``ForegroundProbabilitySlidingWindow...``  **probabilities**: blended softmax foreground ``(B, 1, X, Y, Z)``.
``PerStructureSlidingWindowInferer``       **probabilities**: sigmoid of the stitched logits ``(B, S, X, Y, Z)``,
(MSA)                                      one channel per structure's click map.
``BatchChunkInferer``                      **whatever the network returns** (MedSAM validation: low-res logits),
                                           concatenated over batch chunks.
=========================================  ==================================================================

Probabilities become labels in each bundle's postprocessing (``AsDiscreted`` / argmax), so thresholds live in the
configs. Outputs carry the input's meta and transform trace (MetaTensor) so ``Invertd`` restores the geometry.
"""

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
