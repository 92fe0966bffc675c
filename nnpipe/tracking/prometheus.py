"""Live training metrics for Prometheus: the driver serves ``/metrics`` while it trains.

A training callback, so no loop changes: give :meth:`TrainingExporter.callback`
to ``nnpipe.train(callbacks=...)`` and scrape ``http://HOST:PORT/metrics``.
Off unless asked for (``--metrics-port``, the pipeline's ``metrics_port``, or
``NNPIPE_METRICS_PORT``); port 0 takes a free port and :attr:`url` says which.

Exposed (gauges unless noted), updated once per epoch in every mode. Words
mean one thing everywhere: an *epoch* is one pass over the training rows
(the console's ``epoch k/N``, the MLflow step), a *step* is one optimizer
update, and a *round* is ``sync_every`` local steps of the distributed
modes (MLflow's ``dist/rounds``, per epoch); nothing here counts rounds.

==================================  =============================================
``nnpipe_epoch``                    epochs (epoch-equivalents) done
``nnpipe_epochs_total``             counter of epochs reported (from the restart, when resumed)
``nnpipe_samples_per_second``       training throughput, all workers
``nnpipe_train_loss``               training loss
``nnpipe_validation{metric=...}``   each validation metric (``loss``, ``accuracy``, ...)
``nnpipe_epoch_latency_seconds``    wall time of the last epoch, as seen by the driver
``nnpipe_staleness``                mean staleness of the last epoch's merges (async)
``nnpipe_workers_live``             workers the scheduler knows (1 in single mode)
``nnpipe_workers_lost``             workers lost since training started
``nnpipe_training_info{...}``       run, mode and dataset as labels (value 1)
==================================  =============================================
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Info, start_http_server

log = logging.getLogger(__name__)

ENV_PORT = "NNPIPE_METRICS_PORT"
ENV_HOST = "NNPIPE_METRICS_HOST"


def port_from_env() -> int | None:
    """``NNPIPE_METRICS_PORT`` as an int (None when unset or empty); ValueError quoting a bad value."""
    raw = os.environ.get(ENV_PORT, "").strip()
    if not raw:
        return None
    try:
        port = int(raw)
    except ValueError:
        raise ValueError(f"{ENV_PORT} must be a port number (0 for a free one), got {raw!r}") from None
    if not 0 <= port < 65536:
        raise ValueError(f"{ENV_PORT} must be a port number (0 for a free one), got {raw!r}")
    return port


def check_port_free(port: int, host: str | None = None) -> None:
    """Raise ``OSError`` (one line) if ``port`` cannot be bound on the metrics host: asked for, so not moved."""
    import socket

    host = host or os.environ.get(ENV_HOST) or "127.0.0.1"
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the exporter's server binds
        try:
            sock.bind((host, int(port)))
        except OSError as exc:
            raise OSError(f"metrics port {port} on {host} is in use ({exc.strerror or exc}); choose another "
                          "--metrics-port, or 0 for a free one") from None


class TrainingExporter:
    """Serve one training's live metrics on ``host:port`` (own registry; stop with :meth:`close`).

    Parameters
    ----------
    port : int
        0 for a free port.
    host : str, optional
        Interface to bind (default ``NNPIPE_METRICS_HOST`` or 127.0.0.1; 0.0.0.0 for a remote Prometheus).
    info : mapping, optional
        Labels of ``nnpipe_training_info`` (run, mode, dataset, ...).
    """

    def __init__(self, port: int = 0, host: str | None = None, info: Mapping[str, Any] | None = None):
        self.registry = CollectorRegistry()
        r = self.registry
        self.epoch = Gauge("nnpipe_epoch", "Epochs (epoch-equivalents) done", registry=r)
        self.epochs_done = Counter("nnpipe_epochs", "Epochs reported", registry=r)
        self.samples = Gauge("nnpipe_samples_per_second", "Training throughput, all workers", registry=r)
        self.loss = Gauge("nnpipe_train_loss", "Training loss", registry=r)
        self.validation = Gauge("nnpipe_validation", "Validation metric", ["metric"], registry=r)
        self.latency = Gauge("nnpipe_epoch_latency_seconds", "Wall time of the last epoch", registry=r)
        self.staleness = Gauge("nnpipe_staleness", "Mean staleness of the last epoch's merges", registry=r)
        self.live = Gauge("nnpipe_workers_live", "Workers training now", registry=r)
        self.lost = Gauge("nnpipe_workers_lost", "Workers lost since training started", registry=r)
        Info("nnpipe_training", "What is training", registry=r).info({k: str(v) for k, v in (info or {}).items()})
        self.live.set(1)
        self.host = host or os.environ.get(ENV_HOST) or "127.0.0.1"
        try:
            self.server, self.thread = start_http_server(int(port), addr=self.host, registry=r)
        except OSError as exc:
            if not port:
                raise
            # taken (another training on this machine): serve anyway, on a free port the caller prints
            log.warning("metrics port %s is taken (%s); serving on a free port instead", port, exc)
            self.server, self.thread = start_http_server(0, addr=self.host, registry=r)
        self.port = int(self.server.server_address[1])
        self._last = time.monotonic()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}/metrics"

    def callback(self, step: int, logs: Mapping[str, float]) -> None:
        """A training callback: update every metric from this epoch's logs."""
        now = time.monotonic()
        with self._lock:
            self.latency.set(now - self._last)
            self._last = now
            self.epoch.set(step + 1)
            self.epochs_done.inc()
            for key, value in logs.items():
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    continue
                if key == "train/loss":
                    self.loss.set(value)
                elif key == "train/samples_per_s":
                    self.samples.set(value)
                elif key.startswith("val/"):
                    self.validation.labels(metric=key[len("val/"):]).set(value)
                elif key == "dist/staleness":
                    self.staleness.set(value)
                elif key == "dist/workers_live":
                    self.live.set(value)
                elif key == "dist/workers_lost":
                    self.lost.set(value)

    __call__ = callback

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "TrainingExporter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
