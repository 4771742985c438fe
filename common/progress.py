"""Progress on long runs: a tqdm bar on a terminal, nothing otherwise (log files, CI, a server's output).

:func:`progress` wraps the inferers' long loops (the slices of a propagated box, the prompted slices of a volume);
:func:`on_terminal` gives MONAI's ``SlidingWindowInferer(progress=...)`` the same rule. The validation and
evaluation engines of the bundle configs use ignite's ``ProgressBar`` with ``"disable": null``, which tqdm also reads
as "only on a terminal".
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

__all__ = ["on_terminal", "progress"]

T = TypeVar("T")


def on_terminal() -> bool:
    """Whether standard error is a terminal, where progress bars go."""
    return sys.stderr.isatty()


def progress(iterable: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """``iterable`` with a one-line bar (``desc``, count, rate) on a terminal; the plain iterable elsewhere."""
    return iter(tqdm(iterable, desc=desc, total=total, disable=None, leave=False, file=sys.stderr, dynamic_ncols=True))
