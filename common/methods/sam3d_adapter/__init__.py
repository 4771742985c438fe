"""3DSAM-adapter glue: 3D point prompts, scale-factor resampling, point-centred and automatic inference.

Network: :mod:`common.networks.sam3d_adapter` (on :mod:`common.networks.sam3d`).
"""

from .point_patch import PointPatchInferer
from .points import RandVolumePointsd
from .probability import ForegroundProbabilitySlidingWindowInferer
from .resample import ScaleResampled

__all__ = ["ForegroundProbabilitySlidingWindowInferer", "PointPatchInferer", "RandVolumePointsd", "ScaleResampled"]
