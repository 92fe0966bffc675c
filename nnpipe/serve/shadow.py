"""A challenger in shadow: score each request with a second version, off the response path.

The request handler only puts the checked rows and the served version's
predictions on a bounded queue (a full queue drops the request from the
comparison and counts it; it never slows the answer). A background thread
scores them with the shadow version and accumulates, per shadow version:

* classifier: *agreement*, the share of rows whose label equals the served one;
* regression: the mean absolute difference from the served predictions;

plus the shadow's latency. :mod:`nnpipe.serve.reporter` sends the totals to
Prometheus and, periodically, to MLflow on the shadow version's run.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np

from nnpipe.serve.metrics import ServeMetrics
from nnpipe.serve.watcher import AliasWatcher

log = logging.getLogger("nnpipe.serve")
QUEUE_SIZE = 256


@dataclass
class ShadowTotals:
    """Running comparison of one shadow version with whatever version was served."""

    version: int
    run_id: str | None
    classifier: bool
    rows: int = 0
    matched: float = 0.0  # equal labels (classifier) or summed |difference| (regression)
    seconds: float = 0.0
    requests: int = 0

    @property
    def kind(self) -> str:
        return "agreement" if self.classifier else "mean_abs_diff"

    @property
    def value(self) -> float | None:
        return None if self.rows == 0 else self.matched / self.rows


class ShadowScorer:
    """Scores requests with the version the ``watcher``'s alias names, in a thread of its own."""

    def __init__(self, watcher: AliasWatcher, metrics: ServeMetrics, size: int = QUEUE_SIZE):
        self.watcher = watcher
        self.metrics = metrics
        self.totals: ShadowTotals | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, X: np.ndarray, served: np.ndarray, served_version: int) -> None:
        """Queue one answered request for comparison; never blocks."""
        try:
            self._queue.put_nowait((X, served, served_version))
        except queue.Full:
            self.metrics.shadow_dropped.inc()

    def score(self, X: np.ndarray, served: np.ndarray, served_version: int) -> None:
        """Compare one request now (the thread's body; public for tests)."""
        shadow = self.watcher.current
        if shadow is None or shadow.version == served_version:
            return  # nothing to compare, or the challenger is the champion now
        started = time.perf_counter()
        out = np.asarray(shadow.predict(X))
        elapsed = time.perf_counter() - started
        served = np.asarray(served)
        if shadow.is_classifier:
            matched = float(np.sum(out.reshape(len(X), -1)[:, 0] == served.reshape(len(X), -1)[:, 0]))
        else:
            matched = float(np.sum(np.abs(out.astype(float).reshape(len(X), -1) - served.astype(float).reshape(len(X), -1)).mean(axis=1)))
        with self._lock:
            if self.totals is None or self.totals.version != shadow.version:
                self.totals = ShadowTotals(shadow.version, shadow.run_id, shadow.is_classifier)
            t = self.totals
            t.rows += len(X)
            t.matched += matched
            t.seconds += elapsed
            t.requests += 1
            value = t.value
        self.metrics.shadow_latency.observe(elapsed)
        self.metrics.shadow_rows.labels(str(shadow.version)).inc(len(X))
        self.metrics.shadow_agreement.labels(str(shadow.version), t.kind).set(value)

    def snapshot(self) -> ShadowTotals | None:
        """A copy of the running totals (None before any comparison)."""
        with self._lock:
            return None if self.totals is None else ShadowTotals(**vars(self.totals))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self.score(*item)
            except Exception:  # the shadow must never take the server down
                log.exception("shadow scoring failed")

    def start(self) -> "ShadowScorer":
        """Start the scoring thread; returns self."""
        self._thread = threading.Thread(target=self._run, name="nnpipe-serve-shadow", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Finish the queued comparisons (up to 10 s), then end the thread."""
        try:
            self._queue.put(None, timeout=10)
        except queue.Full:
            pass
        if self._thread is not None:
            self._thread.join(timeout=10)
