"""Shared library of the SAM bundles: networks, transforms, inferers, engines, MONAI Label app pieces."""

from common.monai_notices import drop_nvimgcodec_notices

drop_nvimgcodec_notices()
