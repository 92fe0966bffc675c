"""The HTTP server: MLflow's scoring routes on Starlette, answered by the version the alias names.

Routes: ``POST /invocations`` (MLflow's bodies, see :mod:`nnpipe.serve.protocol`),
``GET /ping`` and ``/health`` (200 when a version is loaded, else 503 saying
why), ``GET /version`` (what is served, what was refused), ``GET /drift`` (see
:mod:`nnpipe.serve.drift`) and ``GET /metrics`` (Prometheus).

Every answer of ``/invocations`` names the version that produced it, in the
``X-Model-Version`` header and the ``model_version`` field beside
``predictions``. Predictions run inline on the event loop: a request is
bounded (``max_rows``) and takes well under a millisecond per row, cheaper
than a hop to a thread pool.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from nnpipe.serve.config import ServeConfig
from nnpipe.serve.drift import DriftMonitor
from nnpipe.serve.metrics import ServeMetrics
from nnpipe.serve.protocol import RequestError, error_json, parse, predictions_json
from nnpipe.serve.reporter import Reporter
from nnpipe.serve.served import ServedVersion
from nnpipe.serve.shadow import ShadowScorer
from nnpipe.serve.watcher import AliasWatcher
from nnpipe.tracking.serving import log_live_metrics
from nnpipe.tracking.store import configure
from nnpipe.version import __version__

log = logging.getLogger("nnpipe.serve")
JSON = "application/json"


class Server:
    """The state one server process keeps: the followed version(s), drift, metrics, background threads."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.metrics = ServeMetrics()
        self.metrics.version.labels(config.alias).set(0)
        self.drift: DriftMonitor | None = None
        self.watcher = AliasWatcher(config.name, config.alias, config.poll, config.retry_after,
                                    on_swap=self._swapped, on_refuse=self._refused(config.alias),
                                    on_error=self.metrics.registry_errors.inc)
        self.shadow_watcher: AliasWatcher | None = None
        self.shadow: ShadowScorer | None = None
        if config.shadow:
            self.shadow_watcher = AliasWatcher(config.name, config.shadow, config.poll, config.retry_after,
                                               on_refuse=self._refused(config.shadow),
                                               on_error=self.metrics.registry_errors.inc)
            self.shadow = ShadowScorer(self.shadow_watcher, self.metrics)
        self.reporter = Reporter(self.tick, self.report, config.report_every)

    # -- hooks -----------------------------------------------------------------------------------
    def _swapped(self, old: ServedVersion | None, new: ServedVersion) -> None:
        try:
            self.report_drift(old, self.drift)  # the old version's last window goes to its own run
        except Exception as exc:  # the store may be down; the swap stands
            log.warning("could not log v%s's last drift window: %s", getattr(old, "version", "?"), exc)
        model = new.model
        self.drift = DriftMonitor(new.feature_names, model.mean, model.scale, self.config.drift_halflife,
                                  classes=model.classes, class_freq=getattr(model, "class_freq", None))
        self.metrics.swaps.labels(self.config.alias).inc()
        self.metrics.version.labels(self.config.alias).set(new.version)

    def _refused(self, alias: str):
        def refused(version: int, reason: str) -> None:
            self.metrics.refused.labels(alias, str(version)).inc()
        return refused

    def tick(self) -> None:
        """Refresh the drift gauges (every second; in every worker process)."""
        drift = self.drift
        shift = None if drift is None else drift.shift()
        if shift is not None:
            for name, value in zip(drift.names, shift):
                self.metrics.drift.labels(name).set(float(value))
            self.metrics.drift_max.set(float(np.max(np.abs(shift))))
        moved = None if drift is None else drift.prediction_shift()
        if moved is not None:
            self.metrics.prediction_shift.set(moved)

    def report_drift(self, current: ServedVersion | None = None, drift: DriftMonitor | None = None) -> None:
        """Log the drift of ``current`` (default: the served version) to its run."""
        if current is None:
            current, drift = self.watcher.current, self.drift
        shift = None if drift is None else drift.shift()
        if current is None or current.run_id is None or shift is None:
            return
        values = {f"live/shift/{n}": float(v) for n, v in zip(drift.names, shift)}
        values.update({"live/shift_max": float(np.max(np.abs(shift))), "live/rows": float(drift.rows)})
        moved = drift.prediction_shift()
        if moved is not None:
            values["live/prediction_shift"] = moved
        log_live_metrics(current.run_id, values)

    def report(self) -> None:
        """Send the shadow comparison and the drift to MLflow (every ``report_every`` seconds)."""
        self.report_drift()
        totals = None if self.shadow is None else self.shadow.snapshot()
        if totals is not None and totals.run_id and totals.rows:
            served = self.watcher.current
            log_live_metrics(totals.run_id, {
                f"shadow/{totals.kind}": totals.value, "shadow/rows": float(totals.rows),
                "shadow/latency_ms": 1000 * totals.seconds / max(totals.requests, 1),
                "shadow/vs_version": float(served.version if served else 0)})

    def start(self) -> None:
        """Load what the aliases name now, then follow them in the background.

        The first load happens before this process accepts a connection (uvicorn
        starts serving after the app's startup), so with several workers none
        answers 503 while another already serves.
        """
        for watcher in (self.watcher, self.shadow_watcher):
            if watcher is not None:
                try:
                    watcher.check()
                except Exception as exc:  # the store is down: start anyway, answer 503 saying why
                    log.warning("could not read alias %s of %r at start: %s", watcher.alias, watcher.name, exc)
        self.watcher.start()
        if self.shadow_watcher is not None:
            self.shadow_watcher.start()
            self.shadow.start()
        self.reporter.start()

    def stop(self) -> None:
        self.watcher.stop()
        if self.shadow_watcher is not None:
            self.shadow_watcher.stop()
            self.shadow.stop()
        self.reporter.stop()

    # -- routes ----------------------------------------------------------------------------------
    def _unavailable(self) -> Response:
        return Response(error_json(self.watcher.status(), "TEMPORARILY_UNAVAILABLE"), 503, media_type=JSON)

    async def _body(self, request: Request) -> bytes:
        limit = self.config.max_body
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestError(413, f"request body is {int(declared)} bytes; the limit is {limit} "
                                    f"(--max-body); send fewer rows per request", "REQUEST_TOO_LARGE")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"request body exceeds {limit} bytes (--max-body); send fewer rows per "
                                        f"request", "REQUEST_TOO_LARGE")
            chunks.append(chunk)
        return b"".join(chunks)

    async def invocations(self, request: Request) -> Response:
        started = time.perf_counter()
        served = self.watcher.current  # one version answers this request from start to end
        if served is None:
            self.metrics.requests.labels("none", "503").inc()
            return self._unavailable()
        version = str(served.version)
        headers = {"X-Model-Name": served.name, "X-Model-Version": version, "X-Model-Alias": self.config.alias}
        try:
            parsed = parse(await self._body(request), request.headers.get("content-type"))
            if parsed.n_rows > self.config.max_rows:
                raise RequestError(413, f"request has {parsed.n_rows} rows; the limit is {self.config.max_rows} "
                                        f"(--max-rows); split it", "REQUEST_TOO_LARGE")
            if parsed.n_rows == 0:
                raise RequestError(400, "request has no rows")
            X = served.features(parsed)
            out = served.predict(X, parsed.params)
        except RequestError as exc:
            return self._refuse(exc.status, exc.message, exc.code, version, headers)
        except ValueError as exc:  # the model's input check: one line naming the column and row
            return self._refuse(400, getattr(exc, "message", None) or str(exc), "BAD_REQUEST", version, headers)
        except Exception as exc:  # a bug, not the client's fault: say so in one line, keep the trace in the log
            log.exception("v%s failed on a request", version)
            self.metrics.requests.labels(version, "500").inc()
            return Response(error_json(f"v{version} failed to predict: {type(exc).__name__}", "INTERNAL_ERROR"), 500,
                            media_type=JSON, headers=headers)
        body = predictions_json(out, served.version)
        drift = self.drift
        if drift is not None and drift.names == served.feature_names:
            drift.observe(X)
            if isinstance(out, np.ndarray):
                drift.observe_predictions(out)
        if self.shadow is not None and isinstance(out, np.ndarray):
            self.shadow.submit(X, out, served.version)
        self.metrics.requests.labels(version, "200").inc()
        self.metrics.rows.labels(version).inc(len(X))
        self.metrics.latency.labels(version).observe(time.perf_counter() - started)
        return Response(body, 200, media_type=JSON, headers=headers)

    def _refuse(self, status: int, message: str, code: str, version: str, headers: dict[str, str]) -> Response:
        message = message.splitlines()[0] if message else "bad input"
        self.metrics.requests.labels(version, str(status)).inc()
        self.metrics.input_errors.labels(str(status)).inc()
        return Response(error_json(message, code), status, media_type=JSON, headers=headers)

    async def ping(self, request: Request) -> Response:
        if self.watcher.current is None:
            return self._unavailable()
        return Response(b"\n", 200, media_type=JSON, headers={"X-Model-Version": str(self.watcher.current.version)})

    def describe(self) -> dict[str, Any]:
        """What this process serves, what it shadows, and what it refused (``GET /version``)."""
        def side(w: AliasWatcher | None) -> dict[str, Any] | None:
            if w is None:
                return None
            return {"alias": w.alias, "version": None if w.current is None else w.current.version,
                    "alias_points_to": w.target, "status": w.status(),
                    "refused": {str(v): why for v, (_, why) in w.refused.items()}}
        totals = None if self.shadow is None else self.shadow.snapshot()
        return {"model": self.config.name, **side(self.watcher), "shadow": side(self.shadow_watcher),
                "shadow_comparison": None if totals is None else
                {"version": totals.version, totals.kind: totals.value, "rows": totals.rows},
                "nnpipe_version": __version__}

    async def version(self, request: Request) -> Response:
        return Response(json.dumps(self.describe()).encode(), 200, media_type=JSON)

    async def drift_report(self, request: Request) -> Response:
        served, drift = self.watcher.current, self.drift
        if served is None or drift is None:
            return self._unavailable()
        return Response(json.dumps({"model": served.name, "version": served.version, **drift.report()}).encode(),
                        200, media_type=JSON)

    async def prometheus(self, request: Request) -> Response:
        self.tick()
        return Response(self.metrics.exposition(), 200, media_type="text/plain; version=0.0.4; charset=utf-8")


def create_app(config: ServeConfig) -> Starlette:
    """The ASGI app for ``config``; its background threads run for the app's lifespan."""
    server = Server(config)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        server.start()
        try:
            yield
        finally:
            server.stop()

    routes = [Route("/invocations", server.invocations, methods=["POST"]),
              Route("/ping", server.ping, methods=["GET"]), Route("/health", server.ping, methods=["GET"]),
              Route("/version", server.version, methods=["GET"]), Route("/drift", server.drift_report, methods=["GET"]),
              Route("/metrics", server.prometheus, methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.server = server
    return app


def app_from_env() -> Starlette:
    """The app factory uvicorn's worker processes call (configuration from ``NNPIPE_SERVE_CONFIG``)."""
    from nnpipe.serve.runner import setup_logging

    setup_logging()
    # The watcher's poll and loads run in threads beside the event loop; hand the GIL back to
    # the loop after 1 ms rather than Python's default 5 ms, so they add little to a request's latency.
    sys.setswitchinterval(0.001)
    configure()  # MLFLOW_TRACKING_URI, as the launcher resolved it
    return create_app(ServeConfig.from_env())
