from .medsam import MedSAMLoss, mask_iou

__all__ = ["MedSAMLoss", "mask_iou"]
