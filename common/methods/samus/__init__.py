"""SAMUS / HQ-SAMUS glue: ultrasound frames to the 256 px model frame, the published augmentation and prompts,
prompted inference with one embedding per image. Network: :mod:`common.networks.samus`; image reading:
:mod:`common.transforms.ultrasound`; datalists: :mod:`common.data.ultrasound`.
"""

from .augment import RandContrastd, RandGammad, RandZoomCropd
from .frames import ResizeFramed, SelectClassd
from .inferer import ObjectPromptInferer
from .prompts import PROMPTS, LabelPromptsd, UserPromptsd, prompt_keys

__all__ = [
    "PROMPTS",
    "LabelPromptsd",
    "ObjectPromptInferer",
    "RandContrastd",
    "RandGammad",
    "RandZoomCropd",
    "ResizeFramed",
    "SelectClassd",
    "UserPromptsd",
    "prompt_keys",
]
