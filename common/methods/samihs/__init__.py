"""SAMIHS glue: head-CT volumes slice by slice with the published preprocessing and prompts. Network:
:mod:`common.networks.samihs`; loss: :mod:`common.losses`; datalists: :mod:`common.data.ich`. SAMIHS derives from
SAMUS, so the click and box rules and the per-object inferer are SAMUS's (:mod:`common.methods.samus`)."""

from .volume import PERCENTILES, VolumePromptsd, VolumeSlicePromptInferer, slice_to_model

__all__ = ["PERCENTILES", "VolumePromptsd", "VolumeSlicePromptInferer", "slice_to_model"]
