"""SAMIHS glue: head-CT volumes slice by slice with the published preprocessing and prompts. Network:
:mod:`common.networks.samihs`; loss: :mod:`common.losses`; datalists: :mod:`common.data.ich`. SAMIHS derives from
SAMUS, so the click and box rules and the per-object inferer are SAMUS's (:mod:`common.methods.samus`)."""

from .slice_input import PERCENTILES, SliceToModeld, slice_intensity_to_model
from .volume import VolumePromptsd, VolumeSlicePromptInferer, slice_to_model

__all__ = [
    "PERCENTILES",
    "SliceToModeld",
    "VolumePromptsd",
    "VolumeSlicePromptInferer",
    "slice_intensity_to_model",
    "slice_to_model",
]
