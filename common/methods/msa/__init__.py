"""Medical SAM Adapter glue: one click per slice as click maps, per-structure sliding-window inference.

Network: :mod:`common.networks.msa`.
"""

from .slice_clicks import PointsToClickMapd, RandSliceClicksd, SliceClicksPerStructured
from .structure_clicks import PerStructureSlidingWindowInferer

__all__ = ["PerStructureSlidingWindowInferer", "PointsToClickMapd", "RandSliceClicksd", "SliceClicksPerStructured"]
