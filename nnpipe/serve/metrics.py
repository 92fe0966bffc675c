"""The server's Prometheus metrics, correct across ``--workers`` processes.

With several worker processes each keeps its own counters; prometheus_client's
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, set by :mod:`nnpipe.serve.runner`
before the workers start) writes them to files that ``/metrics`` on any worker
sums. Without that variable (one process, or a test) the metrics live in a
registry of their own.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess

ENV_DIR = "PROMETHEUS_MULTIPROC_DIR"
# sub-millisecond to a second: a 1-row prediction takes well under a millisecond
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServeMetrics:
    """Every metric of one server process (names start ``nnpipe_serve_``)."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get(ENV_DIR))
        # in multiprocess mode values go to files, and the default registry is the one that writes them
        self.registry = None if self.multiprocess else CollectorRegistry()
        kw = {} if self.multiprocess else {"registry": self.registry}
        gauge = {"multiprocess_mode": "mostrecent"} if self.multiprocess else {}
        self.requests = Counter("nnpipe_serve_requests", "Requests to /invocations by answering version and HTTP status",
                                ["version", "status"], **kw)
        self.latency = Histogram("nnpipe_serve_request_seconds", "Time to answer /invocations (seconds)",
                                 ["version"], buckets=LATENCY_BUCKETS, **kw)
        self.rows = Counter("nnpipe_serve_rows", "Rows predicted, by version", ["version"], **kw)
        self.input_errors = Counter("nnpipe_serve_input_errors", "Requests refused for bad input (400/413/415)",
                                    ["status"], **kw)
        self.swaps = Counter("nnpipe_serve_swaps", "Versions swapped in after loading and a smoke prediction",
                             ["alias"], **kw)
        self.refused = Counter("nnpipe_serve_refused_versions",
                               "Versions the alias pointed to that failed to load, their digest check or the smoke "
                               "prediction (the old version kept serving)", ["alias", "version"], **kw)
        self.registry_errors = Counter("nnpipe_serve_registry_errors", "Failed polls of the registry", **kw)
        self.version = Gauge("nnpipe_serve_version", "Version being served for the alias (0: none yet)",
                             ["alias"], **kw, **gauge)
        self.shadow_agreement = Gauge(
            "nnpipe_serve_shadow_agreement",
            "Shadow version vs served version since the shadow loaded: share of equal labels (classifier) "
            "or mean absolute difference (regression)", ["shadow_version", "kind"], **kw, **gauge)
        self.shadow_rows = Counter("nnpipe_serve_shadow_rows", "Rows scored by the shadow version",
                                   ["shadow_version"], **kw)
        self.shadow_latency = Histogram("nnpipe_serve_shadow_seconds", "Time the shadow version took per request",
                                        buckets=LATENCY_BUCKETS, **kw)
        self.shadow_dropped = Counter("nnpipe_serve_shadow_dropped",
                                      "Requests not shadow-scored because the shadow queue was full", **kw)
        self.drift = Gauge("nnpipe_serve_feature_shift",
                           "Standardised mean shift of live inputs: (live mean - training mean) / training scale",
                           ["feature"], **kw, **gauge)
        self.drift_max = Gauge("nnpipe_serve_feature_shift_max", "Largest absolute standardised mean shift",
                               **kw, **gauge)
        self.prediction_shift = Gauge("nnpipe_serve_prediction_shift",
                                      "Total variation distance of live predicted class shares from the training "
                                      "class shares (0 to 1)", **kw, **gauge)

    def exposition(self) -> bytes:
        """The text ``/metrics`` answers with (summed over worker processes in multiprocess mode)."""
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
