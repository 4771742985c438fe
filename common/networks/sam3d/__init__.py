"""Building blocks of the 3DSAM-adapter (SAM ViT lifted to 3-D); assembled in ``common.networks.sam3d_adapter``."""

from .decoder import MLAHead, MultiLevelDecoder
from .image_encoder import INPUT_PATHS, Attention3d, Block3d, ImageEncoder3d, LayerNorm3d, linear_upsample_matrix
from .prompt_encoder import GlobalQueryBlock, GlobalQueryTransformer, VisualSamplerPromptEncoder, sample_point_features

__all__ = [
    "INPUT_PATHS",
    "Attention3d",
    "Block3d",
    "GlobalQueryBlock",
    "GlobalQueryTransformer",
    "ImageEncoder3d",
    "LayerNorm3d",
    "MLAHead",
    "MultiLevelDecoder",
    "VisualSamplerPromptEncoder",
    "linear_upsample_matrix",
    "sample_point_features",
]
