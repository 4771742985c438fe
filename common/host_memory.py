"""Keep freed tensor memory in the process, so each CPU forward re-uses it instead of faulting in fresh pages.

glibc's ``malloc`` serves blocks above its mmap threshold (adaptive, at most 32 MiB) with ``mmap`` and unmaps them
on ``free``, and returns the top of its heap to the kernel above the trim threshold. A forward whose activations
are tens of MB is then paged in again on every call: LiteMedSAM's TinyViT at 256 px faults about 170,000 pages
(~0.7 GB) per forward; with both thresholds at 1 GiB none after the first forwards, and the encoder runs 1.30x
faster (SAM ViT-B at 1024 px: 1.21x; ``tools/benchmark_host_memory.py``). The price: freed blocks stay mapped, so
the peak resident memory grows (TinyViT +26 MiB, ViT-B +705 MiB).

:func:`keep_freed_memory` sets both thresholds once per process (``mallopt``). It leaves glibc as it is where the
user already chose (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES`` naming
``glibc.malloc``: setting ``MALLOC_MMAP_THRESHOLD_=131072`` is the way to opt out), where another allocator is
preloaded (jemalloc, tcmalloc, mimalloc: ``LD_PRELOAD``), and off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

__all__ = ["THRESHOLD_BYTES", "keep_freed_memory", "user_chose_allocator"]

logger = logging.getLogger(__name__)

#: mmap and trim threshold set by :func:`keep_freed_memory` (bytes; glibc's ``mallopt`` takes an int).
THRESHOLD_BYTES = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
_PRELOADED_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")
_applied = False


def user_chose_allocator(environ=os.environ) -> str | None:
    """Why the allocator is the user's choice (the environment setting that says so), or ``None``."""
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        if name in environ:
            return name
    if "glibc.malloc" in environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    if any(lib in environ.get("LD_PRELOAD", "") for lib in _PRELOADED_ALLOCATORS):
        return "LD_PRELOAD"
    return None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to :data:`THRESHOLD_BYTES` for this process (once; see the module
    docstring); ``True`` when they are set (now or by an earlier call)."""
    global _applied
    if _applied:
        return True
    reason = user_chose_allocator()
    if reason is not None:
        logger.debug(f"malloc left as configured ({reason} is set)")
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _applied = bool(
        libc.mallopt(_M_MMAP_THRESHOLD, THRESHOLD_BYTES) and libc.mallopt(_M_TRIM_THRESHOLD, THRESHOLD_BYTES)
    )
    return _applied
