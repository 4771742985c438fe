"""Drops MONAI's two notices that its optional nvImageCodec DICOM decoder is not installed.

Every ``LoadImage`` builds all registered readers, and ``NvImgCodecPydicomReader`` then says twice per run (a log
record of ``monai.data.nvimgcodec_pydicom_plugin`` and a ``UserWarning``) that nvImageCodec (CUDA, CuPy) is
missing. The bundles name their readers and never use that one, and without nvImageCodec MONAI never picks it, so
the notices say nothing about a run; only these two messages are dropped.
"""

from __future__ import annotations

import logging
import warnings

PLUGIN_LOGGER = "monai.data.nvimgcodec_pydicom_plugin"
LOG_MESSAGE = "nvImageCodec is not available"
WARNING_MESSAGE = r"NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register successfully"


class _DropUnavailableNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(LOG_MESSAGE)


def drop_nvimgcodec_notices() -> None:
    """Filter both notices out (idempotent); any other record or warning passes unchanged."""
    logger = logging.getLogger(PLUGIN_LOGGER)
    if not any(isinstance(f, _DropUnavailableNotice) for f in logger.filters):
        logger.addFilter(_DropUnavailableNotice())
    warnings.filterwarnings("ignore", message=WARNING_MESSAGE, category=UserWarning)
