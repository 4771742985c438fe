"""Importing ``common`` drops MONAI's nvImageCodec-missing notices, and nothing else, from a run's output."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

import pytest
from monai.data.nvimgcodec_pydicom_plugin import is_nvimgcodec_available

from common.monai_notices import PLUGIN_LOGGER, drop_nvimgcodec_notices

BUILD_READERS = "from monai.transforms import LoadImage; LoadImage(image_only=True)"


def _stderr_of(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr


@pytest.mark.skipif(is_nvimgcodec_available(), reason="with nvImageCodec installed MONAI has nothing to report")
def test_building_the_readers_is_quiet_once_common_is_imported():
    assert _stderr_of(BUILD_READERS).count("nvImageCodec") == 2  # MONAI alone: a log record and a UserWarning
    assert "nvImageCodec" not in _stderr_of("import common; " + BUILD_READERS)


def test_only_the_two_notices_are_dropped(caplog):
    drop_nvimgcodec_notices()
    drop_nvimgcodec_notices()  # idempotent: one filter on the logger
    logger = logging.getLogger(PLUGIN_LOGGER)
    assert len(logger.filters) == 1
    with caplog.at_level(logging.WARNING, logger=PLUGIN_LOGGER):
        logger.warning("nvImageCodec is not available; skipping pydicom decoder plugin registration.")
        logger.warning("decoder plugin failed to register: CUDA error")
    assert [r.getMessage() for r in caplog.records] == ["decoder plugin failed to register: CUDA error"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        drop_nvimgcodec_notices()
        warnings.warn("NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register successfully. Falling")
        warnings.warn("NvImgCodecPydicomReader ignores to_gpu=True")
    assert [str(w.message) for w in caught] == ["NvImgCodecPydicomReader ignores to_gpu=True"]
