"""Ctrl-C (or SIGTERM) reaches the study's driver only while it waits for trials, never inside a store write.

The driver's loop is mostly waiting for the next trial to end; between
waits it writes to the MLflow store and the Optuna storage (a trial's run
opened, the study told). A ``KeyboardInterrupt`` raised in the middle of
such a write, inside SQLAlchemy's session or the sqlite3 module, left the
SQLite connection holding its lock: every later write, the runs ended KILLED
on the way out included, then waited 20 s and failed with ``database is
locked`` (three runs left RUNNING, exit 1 and some 1,200 lines of
tracebacks in one Ctrl-C drill out of two). So within :func:`deferred`, a
signal that arrives during bookkeeping is held and delivered (the handler
that was in place is called: Python's ``KeyboardInterrupt``, Prefect's
``TerminationSignal``) as soon as the loop is back waiting, in
:meth:`Deferred.deliverable`.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Deferred:
    """Signals held while bookkeeping, and the handlers that take them once the loop waits."""

    def __init__(self) -> None:
        self.previous: dict[int, Any] = {}
        self.held: list[tuple[int, Any]] = []
        self.open = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.open:
            self.previous[signum](signum, frame)
        else:
            self.held.append((signum, frame))

    def deliver(self) -> None:
        """Call the original handler for the first held signal (it raises), if any arrived."""
        if self.held:
            signum, frame = self.held.pop(0)
            self.held.clear()
            self.previous[signum](signum, frame)

    @contextmanager
    def deliverable(self) -> Iterator[None]:
        """Within the block (where the loop only waits), a signal takes effect at once; a held one first."""
        self.open = True
        try:
            self.deliver()
            yield
        finally:
            self.open = False


@contextmanager
def deferred() -> Iterator[Deferred]:
    """Hold SIGINT and SIGTERM outside :meth:`Deferred.deliverable` blocks; deliver a held one on leaving.

    Only the main thread can handle signals; elsewhere, and for a signal whose
    handler is not a Python callable (ignored, or the default), nothing changes.
    """
    state = Deferred()
    if threading.current_thread() is not threading.main_thread():
        state.open = True
        yield state
        return
    for signum in SIGNALS:
        handler = signal.getsignal(signum)
        if callable(handler):
            state.previous[signum] = handler
            signal.signal(signum, state._handle)
    try:
        yield state
    finally:
        for signum, handler in state.previous.items():
            signal.signal(signum, handler)
        state.open = True
        state.deliver()
