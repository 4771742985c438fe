"""MONAI Label entry point: ``python -m common.label.serve --studies <images>`` starts it (``monailabel start_server
--app apps/sam_bundles --host 127.0.0.1`` in this interpreter; see :mod:`common.label.serve`).

The app lives in the installed library (``common.label.app``); MONAI Label finds it here by its base class.
"""

from common.label.app import SamBundlesApp  # noqa: F401
