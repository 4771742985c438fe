"""MedSAM / LiteMedSAM glue: box prompts for evaluation and training, box propagation, the loss.

Network: :mod:`common.networks.medsam`.
"""

from .batch import PrepareBoxPromptBatch
from .box_propagation import BoxPropagationInferer, SliceEmbeddingCache, propagation_order
from .evaluation_boxes import EvaluationBoxesd, StructureChannelsd, structure_boxes
from .loss import MedSAMLoss, mask_iou
from .slices import ForegroundSlicesd

__all__ = [
    "BoxPropagationInferer",
    "EvaluationBoxesd",
    "ForegroundSlicesd",
    "MedSAMLoss",
    "PrepareBoxPromptBatch",
    "SliceEmbeddingCache",
    "StructureChannelsd",
    "mask_iou",
    "propagation_order",
    "structure_boxes",
]
