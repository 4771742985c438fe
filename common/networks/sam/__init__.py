"""SAM core: ViT image encoder with adapter slots and hooks, prompt encoder, two-way transformer with adapter slots,
mask decoder (points, boxes and dense mask prompts).

State dicts use the official ``sam_vit_{b,l,h}`` key layout (``image_encoder.*``, ``prompt_encoder.*``,
``mask_decoder.*``), so Meta's checkpoints load with ``strict=True`` via :func:`load_checkpoint`.
"""

from .build import DECODER_DEFAULTS, TINY_OVERRIDES, build_sam_vit, build_tiny_sam
from .checkpoint import (
    SAM_VIT_B_HINT,
    CheckpointError,
    extract_state_dict,
    load_checkpoint,
    load_leaving_new_modules,
    load_state_dict_file,
    torch_load_weights,
)
from .common import MLP, LayerNorm2d, MLPBlock
from .image_encoder import (
    ADAPTER_SLOTS,
    ENCODER_HOOKS,
    VIT_PRESETS,
    Attention,
    Block,
    ImageEncoderViT,
    PatchEmbed,
    ResizePosEmbed,
    window_partition,
    window_unpartition,
)
from .mask_decoder import MaskDecoder
from .model import GreySam, Sam, grey_to_rgb
from .prompt_encoder import PositionEmbeddingRandom, PromptEncoder
from .slots import AdapterSlots, ContextTap
from .tiny_vit import TinyViT
from .transformer import DECODER_ADAPTER_SLOTS, TwoWayAttentionBlock, TwoWayTransformer

__all__ = [
    "ADAPTER_SLOTS",
    "DECODER_ADAPTER_SLOTS",
    "ENCODER_HOOKS",
    "GreySam",
    "SAM_VIT_B_HINT",
    "AdapterSlots",
    "Attention",
    "Block",
    "CheckpointError",
    "ContextTap",
    "DECODER_DEFAULTS",
    "ImageEncoderViT",
    "LayerNorm2d",
    "MLP",
    "MLPBlock",
    "MaskDecoder",
    "PatchEmbed",
    "PositionEmbeddingRandom",
    "PromptEncoder",
    "ResizePosEmbed",
    "Sam",
    "TINY_OVERRIDES",
    "TinyViT",
    "TwoWayAttentionBlock",
    "TwoWayTransformer",
    "VIT_PRESETS",
    "build_sam_vit",
    "build_tiny_sam",
    "extract_state_dict",
    "grey_to_rgb",
    "load_checkpoint",
    "load_leaving_new_modules",
    "load_state_dict_file",
    "torch_load_weights",
    "window_partition",
    "window_unpartition",
]
