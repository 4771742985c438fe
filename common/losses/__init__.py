"""Losses MONAI lacks: SAMIHS's boundary-sensitive loss (Boundary DoU)."""

from .boundary import BoundaryDoUBCELoss, BoundaryDoULoss, boundary_and_area

__all__ = ["BoundaryDoUBCELoss", "BoundaryDoULoss", "boundary_and_area"]
