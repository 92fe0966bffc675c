"""Periodic duties of a server process: refresh gauges every second, send live metrics to MLflow.

Every ``report_every`` seconds (and once at shutdown) it logs, at step = unix
seconds:

* to the **shadow version's run**: ``shadow/agreement`` (classifier) or
  ``shadow/mean_abs_diff`` (regression), ``shadow/rows``,
  ``shadow/latency_ms`` and ``shadow/vs_version`` (the version compared with);
* to the **served version's run**: ``live/rows``, ``live/shift_max`` and
  ``live/shift/<feature>`` (see :mod:`nnpipe.serve.drift`).

So ``nnpipe models NAME``, ``nnpipe drift NAME`` and the MLflow UI show how a
challenger did on live traffic and how far the inputs moved, without access
to the server. With ``--workers N`` each process logs its own share.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from nnpipe.serve.periodic import Periodic

log = logging.getLogger("nnpipe.serve")


class Reporter(Periodic):
    """Calls ``tick()`` every second and ``report()`` every ``report_every`` seconds, in a daemon thread."""

    def __init__(self, tick: Callable[[], None], report: Callable[[], None], report_every: float = 60.0):
        super().__init__("nnpipe-serve-report", 1.0)
        self._tick, self._report = tick, report
        self.report_every = float(report_every)
        self._last = time.monotonic()

    def _safe(self, fn: Callable[[], None], what: str) -> None:
        try:
            fn()
        except Exception as exc:  # the store may be down for a while; serving goes on
            log.warning("%s failed: %s: %s", what, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")

    def step(self) -> None:
        self._safe(self._tick, "refreshing gauges")
        if time.monotonic() - self._last >= self.report_every:
            self._last = time.monotonic()
            self._safe(self._report, "logging live metrics to MLflow")

    def stop(self) -> None:
        """Stop, then report once more so the last window is not lost."""
        super().stop()
        self._safe(self._tick, "refreshing gauges")
        self._safe(self._report, "logging live metrics to MLflow")
