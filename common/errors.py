"""Errors a person can read: the project's input errors, and how ``python -m monai.bundle run`` reports them.

The project raises :class:`InputNotFoundError` / :class:`InvalidInputError` (still ``FileNotFoundError`` /
``ValueError``) for bad user input: a missing image or weights file, a prompt outside the image, a malformed
box. By the time such an error reaches the command line, MONAI has wrapped it several times (``applying
transform ...``, ``Failed to evaluate ConfigExpression ...``) and Ignite, MONAI's ``StatsHandler`` and the
interpreter have each printed its traceback. A bundle config that calls :func:`readable_errors` first in its
``initialize`` list, and lists :class:`common.engines.input_errors.InputErrorHandler` first among its engine
handlers, gets instead:

* for the project's input errors, two lines: how to get the traceback, then ``error: <Type>: <message>`` (the
  root cause); no traceback, no repeated log lines; exit status 1;
* for any other error, the usual traceback, followed by the root cause as the last line.

Set ``SAM_BUNDLES_TRACEBACK=1`` to get the full tracebacks and logs back. Nothing changes when a workflow runs
inside another program (tests, MONAI Label, a notebook): :func:`readable_errors` acts only in a
``python -m monai.bundle`` process, where it reformats the uncaught exception at the top of the interpreter and
hides log records only while an input error is being handled.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from types import TracebackType

__all__ = [
    "TRACEBACK_ENV",
    "BundleInputError",
    "InputNotFoundError",
    "InvalidInputError",
    "error_chain",
    "filter_every_handler",
    "full_tracebacks",
    "input_error",
    "readable_errors",
    "readable_errors_installed",
    "run_cli",
]

#: Environment variable that brings the full tracebacks back (any value but "", "0", "false", "no").
TRACEBACK_ENV = "SAM_BUNDLES_TRACEBACK"


class BundleInputError(Exception):
    """Base of the project's errors about user input; the message names the key or file and what is wrong."""


class InputNotFoundError(BundleInputError, FileNotFoundError):
    """A file or folder the user named (image, weights, data set) does not exist."""


class InvalidInputError(BundleInputError, ValueError):
    """A user input exists but is malformed or inconsistent (a box outside the image, a bad label value, ...)."""


def error_chain(exc: BaseException | None) -> list[BaseException]:
    """``exc`` and every exception it wraps (``__cause__``, else ``__context__``), outermost first."""
    chain: list[BaseException] = []
    while exc is not None and all(exc is not seen for seen in chain):
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def input_error(exc: BaseException | None) -> BundleInputError | None:
    """The innermost :class:`BundleInputError` that ``exc`` is or wraps, else ``None``."""
    found = [e for e in error_chain(exc) if isinstance(e, BundleInputError)]
    return found[-1] if found else None


def full_tracebacks() -> bool:
    """Whether ``SAM_BUNDLES_TRACEBACK`` asks for the full tracebacks."""
    return os.environ.get(TRACEBACK_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _one_line(exc: BaseException) -> str:
    """``Type: message`` on one line (a multi-line message, e.g. a checkpoint's misfitting keys, joined by ``; ``)."""
    lines = [line.strip() for line in f"{type(exc).__name__}: {exc}".splitlines() if line.strip()]
    return "; ".join(lines).replace(":; ", ": ")


def _report_input_error(cause: BaseException) -> None:
    print(f"(input error; set {TRACEBACK_ENV}=1 for the full traceback)", file=sys.stderr)
    print(f"error: {_one_line(cause)}", file=sys.stderr)


class _HideInputErrorRecords(logging.Filter):
    """Drops log records emitted while a project input error is being handled (or carrying one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        return input_error(exc) is None


_FILTER = _HideInputErrorRecords()


def filter_every_handler() -> None:
    """Add the input-error filter to every logging handler that exists now (idempotent)."""
    loggers = [logging.getLogger()] + [
        logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)


def _excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    cause = input_error(exc)
    if cause is not None:
        _report_input_error(cause)
        return
    traceback.print_exception(kind, exc, tb)
    root = error_chain(exc)[-1]
    if root is not exc:
        print(f"error: {_one_line(root)}", file=sys.stderr)


def _run_by_bundle_cli() -> bool:
    """Whether this interpreter is ``python -m monai.bundle`` (also under ``torchrun -m monai.bundle``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec is not None and spec.name in ("monai.bundle", "monai.bundle.__main__")


def readable_errors_installed() -> bool:
    """Whether :func:`readable_errors` installed its exception hook in this process."""
    return sys.excepthook is _excepthook


def readable_errors() -> bool:
    """Report uncaught errors as the module docstring says (first item of a config's ``initialize``).

    Only in ``python -m monai.bundle`` processes: installs the interpreter's exception hook and a filter on every
    logging handler that exists now. A no-op inside other programs (tests, MONAI Label, notebooks) and with
    ``SAM_BUNDLES_TRACEBACK`` set. Returns whether it installed anything. In such a process it then checks the
    command line's overrides (:func:`common.config_checks.check_cli_overrides`: a mistyped key, an absent device),
    with or without ``SAM_BUNDLES_TRACEBACK``.
    """
    if not _run_by_bundle_cli():
        return False
    from common.config_checks import check_cli_overrides  # here: config_checks imports this module

    installed = not full_tracebacks()
    if installed:
        sys.excepthook = _excepthook
        filter_every_handler()
    check_cli_overrides()
    return installed


def run_cli(component, print_result: bool = True) -> None:
    """``fire.Fire(component)`` for the project's tools: an input error (one the exception is or wraps) is reported
    as :func:`readable_errors` reports it, in exactly two lines, and exits with status 1. Other errors, and every
    error under ``SAM_BUNDLES_TRACEBACK``, keep their traceback; Fire's own usage errors still exit with status 2.
    ``print_result=False``: Fire does not print the return value (for tools that report what they did themselves)."""
    import fire

    try:
        fire.Fire(component, serialize=None if print_result else (lambda result: None))
    except Exception as exc:
        cause = input_error(exc)
        if cause is None or full_tracebacks():
            raise
        _report_input_error(cause)
        sys.exit(1)
