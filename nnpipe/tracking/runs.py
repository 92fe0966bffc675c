"""Run lifecycle: one MLflow run per training, its parameters, tags and metrics.

A run that raises ends with status ``FAILED`` and a ``nnpipe.failure`` tag
holding the error, and the error propagates: the caller's registration code
after (or at the end of) the ``with`` block never runs, and
:func:`nnpipe.tracking.register_model` refuses runs that did not succeed.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from nnpipe.tracking.heartbeat import Heartbeat, driver_tags
from nnpipe.tracking.store import artifact_root, client

FAILURE_TAG = "nnpipe.failure"
MAX_PARAM_VALUE = 6000  # MLflow's limit on a parameter value
MAX_TAG_VALUE = 8000  # MLflow's limit on a run tag value
MAX_KEY = 250
BATCH_PARAMS = 100  # log_batch accepts at most 100 params ...
BATCH_METRICS = 1000  # ... and 1000 metrics per call
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /:]")

SYSTEM_METRICS_INTERVAL = 0.5  # seconds: a run of one second still gets a point (MLflow drops a partial sample)
DESCRIPTION_TAG = "mlflow.note.content"  # what the MLflow UI shows as the run's description

MetricsCallback = Callable[[int, Mapping[str, float]], None]


def mlflow_key(key: Any) -> str:
    """A valid MLflow key: disallowed characters become ``_``, long keys are cut."""
    return _BAD_KEY_CHARS.sub("_", str(key))[:MAX_KEY]


def clip(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 15] + "...[truncated]"


def _param_value(value: Any) -> str:
    if isinstance(value, (list, tuple, dict)):
        try:
            value = json.dumps(value, default=str)
        except (TypeError, ValueError):
            value = str(value)
    return clip(str(value), MAX_PARAM_VALUE)


def as_mapping(obj: Any) -> Mapping[str, Any]:
    """A mapping, or an object with ``to_dict()`` (``TrainConfig``) as one."""
    if isinstance(obj, Mapping):
        return obj
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise TypeError(f"expected a mapping or an object with to_dict(), got {type(obj).__name__}")


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings flattened to ``a.b`` keys; values as strings within MLflow's limits.

    Examples
    --------
    >>> flatten_params({"model": {"hidden": [64, 32]}, "lr": 0.01})
    {'model.hidden': '[64, 32]', 'lr': '0.01'}
    """
    out: dict[str, str] = {}
    for key, value in as_mapping(params).items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, prefix=f"{full}."))
        else:
            out[mlflow_key(full)] = _param_value(value)
    return out


def get_or_create_experiment(name: str) -> str:
    """The id of experiment ``name``, created (next to a SQLite store) if missing.

    Two runs starting at once may both try to create it; the loser re-reads.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"experiment name must be a non-empty string, got {name!r}")
    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    root = artifact_root()
    location = None if root is None else f"{root}/{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}"
    try:
        return c.create_experiment(name, artifact_location=location)
    except MlflowException:
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


@contextmanager
def training_run(
    experiment: str,
    params: Mapping[str, Any],
    tags: Mapping[str, Any] | None = None,
    run_name: str | None = None,
    nested: bool = False,
    run_id: str | None = None,
    description: str | None = None,
    system_metrics: bool = False,
) -> Iterator[mlflow.ActiveRun]:
    """Start a run, log ``params`` and ``tags``, and end it FINISHED or FAILED.

    Parameters
    ----------
    experiment : str
        Experiment name (created if missing), e.g. one per dataset or pipeline.
    params : mapping
        The whole configuration; nested mappings become ``a.b`` keys, values
        are strings of at most 6000 characters.
    tags : mapping, optional
        Lineage tags, e.g. from :func:`nnpipe.tracking.run_tags`.
    run_name : str, optional
    nested : bool
        Start as a child of the active run (sweeps).
    run_id : str, optional
        Reopen this run instead of starting one (a resumed tuning study); ``params`` must match what it logged.
    description : str, optional
        Markdown shown as the run's description (:func:`set_run_description` updates it).
    system_metrics : bool
        Sample CPU, memory, disk and network use into ``system/*`` metrics
        while the run is active (MLflow's monitor; every
        ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` s, default here 0.5 s).

    Yields
    ------
    mlflow.ActiveRun

    Notes
    -----
    While open, the run carries its driver's identity and a heartbeat
    (:mod:`nnpipe.tracking.orphans`), so that a driver killed outright leaves
    a run the next command ends FAILED, not one RUNNING forever.
    On an exception the run gets ``nnpipe.failure = "<Type>: <message>"`` and
    status ``FAILED`` (``KILLED`` on ``KeyboardInterrupt``, a termination signal or
    ``SystemExit``), then the exception
    is re-raised.
    """
    exp_id = get_or_create_experiment(experiment)
    # The driver's identity and heartbeat: a run whose driver dies outright is found and ended
    # by the next command (nnpipe.tracking.orphans) instead of showing RUNNING forever.
    tags = {**driver_tags(), **(tags or {})}
    str_tags = {mlflow_key(k): clip(str(v), MAX_TAG_VALUE) for k, v in tags.items() if v is not None}
    if system_metrics and not os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"):
        mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL)  # MLflow's 10 s misses short trainings
    run = mlflow.start_run(run_id=run_id, experiment_id=exp_id, run_name=None if run_id else run_name,
                           nested=nested, tags=str_tags, description=None if run_id else description,
                           log_system_metrics=system_metrics or None)
    run_id = run.info.run_id
    heartbeat = Heartbeat(run_id)
    try:
        log_params(run_id, params)
        yield run
    except BaseException as exc:
        _end_stopped(run_id, heartbeat, exc)
        raise
    else:
        heartbeat.stop()
        flush_metrics(run_id)
        _end(run_id, "FINISHED")


def _end(run_id: str, status: str) -> None:
    """End ``run_id`` with ``status``, even if it is no longer the active run.

    A nested run left open inside the block would be the active one, and
    ``end_run`` alone would end it instead.
    """
    if mlflow.active_run() is not None and mlflow.active_run().info.run_id == run_id:
        mlflow.end_run(status)
    else:
        client().set_terminated(run_id, status)


def _end_stopped(run_id: str, heartbeat: Heartbeat, exc: BaseException) -> None:
    """End the run that ``exc`` stopped: FAILED with its reason, or KILLED; never raises (a warning instead).

    An Exception is a failure; any other BaseException is a stop from outside
    (Ctrl-C, SIGTERM as Prefect's TerminationSignal, SystemExit): the run was
    killed, not broken.
    """
    status = "FAILED" if isinstance(exc, Exception) else "KILLED"
    reason = clip(f"{type(exc).__name__}: {exc}", MAX_TAG_VALUE)
    with _second_sigterm_waits():
        try:
            flush_metrics(run_id)  # a failed run's curves show where it went wrong
        except Exception:  # the store may be what failed; the status below matters more
            pass
        heartbeat.stop()
        try:
            client().set_tag(run_id, FAILURE_TAG, reason)
        except Exception:  # the store failing too must not hide why the run stopped; the status matters more
            pass
        try:
            _end(run_id, status)
        except Exception as store_exc:  # one line; the original exception still propagates
            import warnings

            first = str(store_exc).splitlines()[0] if str(store_exc) else type(store_exc).__name__
            # 3: past this helper and training_run, the frame the inline call (stacklevel 2) named
            warnings.warn(f"run {run_id} could not be marked {status} in the tracking store ({first}); "
                          "the next nnpipe command in this store ends it FAILED", RuntimeWarning, stacklevel=3)


@contextmanager
def _second_sigterm_waits() -> Iterator[None]:
    """While a stopped run ends itself, a further SIGTERM waits until it has (main thread only).

    A flow run on a Prefect worker gets SIGTERM twice when its stack stops: from
    the worker shutting down its flow runs and from ``stack down`` itself.
    Prefect's handler raises ``TerminationSignal`` for each; the second one,
    landing in the writes below, used to abort them and leave the run RUNNING.
    """
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if pending:  # delivered again, now that the run is ended, to whatever handled it before
            os.kill(os.getpid(), signal.SIGTERM)


def log_params(run_id: str, params: Mapping[str, Any]) -> dict[str, str]:
    """Log flattened ``params`` in batches of 100; returns what was logged."""
    flat = flatten_params(params)
    items = [Param(k, v) for k, v in flat.items()]
    c = client()
    for start in range(0, len(items), BATCH_PARAMS):
        c.log_batch(run_id, params=items[start : start + BATCH_PARAMS])
    return flat


def metric_key(key: str) -> str:
    """The MLflow key of a training log key, grouped the way the UI sections metrics by prefix.

    ``lr`` -> ``train/lr``; ``worker/0/samples_per_s`` -> ``dist/worker/0/samples_per_s``
    (one ``dist`` section rather than one per worker); other keys unchanged.
    """
    if "/" not in key:
        return f"train/{key}"
    if key.startswith("worker/"):
        return f"dist/{key}"
    return key


def metric_points(logs: Mapping[str, Any], step: int, prefix: str = "", model_id: str | None = None) -> list[Metric]:
    now = int(time.time() * 1000)
    out = []
    for key, value in logs.items():
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue  # not a number (e.g. an event string): nothing to plot
        if math.isfinite(value):  # MLflow rejects NaN/inf in some stores; a gap is honest
            name = key if key.startswith(prefix) else f"{prefix}{key}"
            out.append(Metric(mlflow_key(name), value, now, int(step), model_id=model_id))
    return out


def log_metric_points(run_id: str, metrics: list[Metric]) -> None:
    c = client()
    for start in range(0, len(metrics), BATCH_METRICS):
        c.log_batch(run_id, metrics=metrics[start : start + BATCH_METRICS])


# Per-epoch metrics wait here and go out in one log_batch at most every
# FLUSH_S seconds: a SQLite store takes ~15-45 ms per write, which was most of
# a 100-epoch iris run. The UI still sees live curves, one second behind.
FLUSH_S = 1.0
_pending: dict[str, list[Metric]] = {}
_last_flush: dict[str, float] = {}
_pending_lock = threading.Lock()


def flush_metrics(run_id: str | None = None) -> None:
    """Write the buffered per-epoch metrics of ``run_id`` (of every run when None) now."""
    with _pending_lock:
        ids = [run_id] if run_id is not None else list(_pending)
        batches = [(rid, _pending.pop(rid, [])) for rid in ids]
        for rid in ids:
            _last_flush[rid] = time.monotonic()
    for rid, metrics in batches:
        if metrics:
            log_metric_points(rid, metrics)


def metrics_callback(run_id: str) -> MetricsCallback:
    """A training callback ``(step, logs)`` that logs every finite value of ``logs`` at ``step``.

    Keys are grouped by :func:`metric_key` (``train/loss``, ``train/lr``,
    ``dist/staleness``, ``dist/worker/0/samples_per_s``, ...). Writes are
    batched: at most one ``log_batch`` per :data:`FLUSH_S` seconds;
    :func:`flush_metrics` (called when a :func:`training_run` ends) writes the rest.
    """
    if not run_id:
        raise ValueError(f"run_id must be a run id, got {run_id!r}")

    def callback(step: int, logs: Mapping[str, float]) -> None:
        metrics = metric_points({metric_key(k): v for k, v in logs.items()}, step)
        with _pending_lock:
            _pending.setdefault(run_id, []).extend(metrics)
            due = time.monotonic() - _last_flush.get(run_id, -math.inf) >= FLUSH_S
        if due:
            flush_metrics(run_id)

    return callback


def log_final_metrics(run_id: str, metrics: Mapping[str, float], prefix: str = "test/", step: int = 0,
                      model_id: str | None = None) -> dict[str, float]:
    """Log held-out metrics as ``<prefix><key>`` (keys already prefixed are kept); returns them.

    With ``model_id`` (a logged model's id) they also show on that model's page.
    """
    logged = metric_points(metrics, step, prefix, model_id)
    log_metric_points(run_id, logged)
    return {m.key: m.value for m in logged}


def set_run_tags(run_id: str, tags: Mapping[str, Any]) -> None:
    """Add tags to a run (e.g. facts known only after training)."""
    items = [RunTag(mlflow_key(k), clip(str(v), MAX_TAG_VALUE)) for k, v in tags.items() if v is not None]
    if items:
        client().log_batch(run_id, tags=items)


def set_run_description(run_id: str, text: str) -> None:
    """Replace the run's description (markdown on the run page)."""
    client().set_tag(run_id, DESCRIPTION_TAG, clip(text, MAX_TAG_VALUE))


def run_status(run_id: str) -> str:
    """``RUNNING``, ``FINISHED``, ``FAILED``, ``KILLED`` or ``SCHEDULED``."""
    return client().get_run(run_id).info.status
