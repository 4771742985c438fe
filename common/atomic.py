"""Write output files so that nobody sees a partial one: a temporary file in the target folder, then a rename.

An interrupted or failed write leaves the previous file (or none) and no temporary file behind: an exception
(``KeyboardInterrupt`` included) removes it, and so do SIGTERM and SIGHUP, which otherwise end the process without
running any cleanup. Temporary files are named ``.tmp_*`` (:func:`is_temporary`), so a file left by a process that
could not clean up (``kill -9``, a power cut) is recognisable, and packaging skips it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["TEMPORARY_PREFIX", "atomic_path", "is_temporary", "write_text_atomic"]

TEMPORARY_PREFIX = ".tmp_"
_UMASK = os.umask(0)
os.umask(_UMASK)
#: {temporary file being written now: the process writing it}; the signal handler removes its own process's only
#: (a forked child, e.g. a DataLoader worker, inherits the handler and a copy of this).
_LIVE: dict[str, int] = {}
#: {signal number: the handler it had before ours}, while ours is installed.
_PREVIOUS_HANDLERS: dict[int, object] = {}
_CLEANED_SIGNALS = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]


def is_temporary(name: str) -> bool:
    """Whether a file name is one of :func:`atomic_path`'s temporary files."""
    return os.path.basename(name).startswith(TEMPORARY_PREFIX)


def _remove_live_then_resignal(signum, frame) -> None:
    """Remove the temporary files being written, then let the signal do what it did before (by default: end the
    process with that signal)."""
    for tmp, pid in list(_LIVE.items()):
        if pid == os.getpid():
            with contextlib.suppress(OSError):
                os.remove(tmp)
    previous = _PREVIOUS_HANDLERS.pop(signum, signal.SIG_DFL)
    previous = signal.SIG_DFL if previous is None else previous  # None: a handler set outside Python
    signal.signal(signum, previous)  # type: ignore[arg-type]
    if callable(previous):
        previous(signum, frame)
    else:
        os.kill(os.getpid(), signum)


def _clean_up_on_signals() -> None:
    """Install the cleaning handler (Python only allows it from the main thread; in other threads exceptions
    still clean up, and servers handle their own shutdown)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in _CLEANED_SIGNALS:
        if signum not in _PREVIOUS_HANDLERS:
            _PREVIOUS_HANDLERS[signum] = signal.signal(signum, _remove_live_then_resignal)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path`` (its folder is created; the name ends like ``path``, so writers that
    go by the extension work); on success rename it to ``path`` (permissions as the umask allows), on error or
    SIGTERM/SIGHUP remove it. Write to the yielded path with any writer (``torch.save``, ``nib.save``, ...)."""
    target = os.path.abspath(path)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    _clean_up_on_signals()
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=TEMPORARY_PREFIX, suffix=os.path.basename(target))
    os.close(fd)
    _LIVE[tmp] = os.getpid()
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600, which would hide shared outputs from other users
        os.replace(tmp, target)
    finally:
        _LIVE.pop(tmp, None)
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> str:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)
    return str(path)
