"""The engine side of :mod:`common.errors`: no repeated traceback logs for an exception that ends a run."""

from __future__ import annotations

from ignite.engine import Engine, Events

from common.errors import filter_every_handler, readable_errors_installed

__all__ = ["InputErrorHandler"]


class InputErrorHandler:
    """Ignite handler, first in an engine's handler list: the engine's exception is re-raised at once, before
    MONAI's ``StatsHandler`` logs the same traceback again (``EXCEPTION_RAISED`` handlers run in the order
    attached; the interpreter or the caller still gets the whole exception), and the logging handlers created with
    the engine get the filter of :func:`common.errors.readable_errors`."""

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self.exception_raised)

    def started(self, engine: Engine) -> None:
        if readable_errors_installed():
            filter_every_handler()

    def exception_raised(self, engine: Engine, exc: Exception) -> None:
        raise exc
