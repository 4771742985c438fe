"""MONAI Label entry point: ``monailabel start_server --app apps/sam_bundles --studies <images>``.

The app lives in the installed library (``common.label.app``); MONAI Label finds it here by its base class.
"""

from common.label.app import SamBundlesApp  # noqa: F401
