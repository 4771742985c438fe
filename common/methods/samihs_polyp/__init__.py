"""SAMIHS polyp variant (addendum 4): video frames prompted by an external network's probability maps (PNS+) as
SAM dense mask prompts, optionally with clicks or a box, or with the previous frame's prediction.
Mask-prompt transforms: :mod:`common.transforms.mask_prompt`; datalists: :mod:`common.data.sunseg`; metrics:
:mod:`common.metrics.sunseg`; network: :mod:`common.networks.samihs`."""

from .frames import FramePromptsd, MaskPromptFrameInferer

__all__ = ["FramePromptsd", "MaskPromptFrameInferer"]
