"""Write output files so that nobody sees a partial one: a temporary file in the target folder, then a rename.

An interrupted or failed write leaves the previous file (or none) and no temporary file behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["atomic_path", "write_text_atomic"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path`` (its folder is created); on success rename it to ``path``, on error
    remove it. Write to the yielded path with any writer (``torch.save``, ``open``, ...)."""
    target = os.path.abspath(path)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".tmp_", suffix=os.path.basename(target))
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp creates 0600, which would hide shared outputs from other users
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> str:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)
    return str(path)
