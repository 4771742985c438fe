"""Test-only: put on PYTHONPATH of the MONAI Label server the tests start (and of its training subprocesses).

monailabel imports torchvision at start-up (``monailabel.transform.post``); the registry's torchvision is a CUDA
build that cannot load with the CPU torch here, so the placeholder of ``tests/torchvision_standin.py`` is
installed when, and only when, the real package fails to import. Any placeholder that gets called raises.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torchvision_standin  # noqa: E402

torchvision_standin.install_if_broken()
sys.path.pop(0)
