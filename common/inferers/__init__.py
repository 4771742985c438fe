"""Inferers: the generic one here, and what every inferer of the project returns, in one place.

The method-specific inferers live with their method (``common.methods.<method>``).

=========================================  ==================================================================
inferer                                    output
=========================================  ==================================================================
``medsam.BoxPropagationInferer``          **labels**: int64 label map ``(B, 1, X, Y[, Z])``, or binary float
                                           channels ``(B, L, ...)`` with ``output="channels"``. It must
                                           threshold (logit > 0) on every slice: the next slice's box prompt
                                           comes from the previous slice's binary mask.
``sam3d_adapter.PointPatchInferer``       **probabilities**: softmax foreground ``(B, K, X, Y, Z)`` in [0, 1],
                                           one channel per point protocol, 0 outside the patch.
``sam3d_adapter.ForegroundProbability...`` **probabilities**: blended softmax foreground ``(B, 1, X, Y, Z)``.
``msa.PerStructureSlidingWindowInferer``   **probabilities**: sigmoid of the stitched logits ``(B, S, X, Y, Z)``,
                                           one channel per structure's click map.
``BatchChunkInferer``                      **whatever the network returns** (MedSAM validation: low-res logits),
                                           concatenated over batch chunks.
=========================================  ==================================================================

Probabilities become labels in each bundle's postprocessing (``AsDiscreted`` / argmax), so thresholds live in the
configs. Outputs carry the input's meta and transform trace (MetaTensor) so ``Invertd`` restores the geometry.
"""

from .chunked import BatchChunkInferer

__all__ = ["BatchChunkInferer"]
