"""Child runs driven from one thread for many concurrent jobs (tuning trials), without MLflow's active-run state.

MLflow's fluent API keeps one active run per thread; a driver that has K
trials in flight opens, fills and ends their runs by id instead.

Every write to a SQLite store is a transaction of ~10-40 ms of the driver's
CPU, which on a small machine is CPU the trials' workers do not get. So a
child run costs two writes to open (the run with its tags, then its params)
and two to close (metrics and tags in one batch, then the status).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Mapping

from mlflow.entities import Metric, RunTag

from nnpipe.tracking.heartbeat import driver_tags
from nnpipe.tracking.runs import (
    BATCH_METRICS,
    FAILURE_TAG,
    MAX_TAG_VALUE,
    clip,
    get_or_create_experiment,
    log_metric_points,
    log_params,
    metric_points,
    mlflow_key,
    set_run_tags,
)
from nnpipe.tracking.store import client

PARENT_TAG = "mlflow.parentRunId"
BATCH_TAGS = 100  # log_batch's limit on tags per call

# A parent's experiment never changes: asked once per parent, not once per trial.
_experiment_of: dict[str, str] = {}
_lock = threading.Lock()


def _tags(tags: Mapping[str, Any]) -> dict[str, str]:
    return {mlflow_key(k): clip(str(v), MAX_TAG_VALUE) for k, v in tags.items() if v is not None}


def start_child_run(parent_run_id: str, name: str, params: Mapping[str, Any],
                    tags: Mapping[str, Any] | None = None) -> str:
    """A RUNNING run nested under ``parent_run_id`` (same experiment) with ``params``; returns its id."""
    c = client()
    with _lock:
        experiment = _experiment_of.get(parent_run_id)
    if experiment is None:
        experiment = c.get_run(parent_run_id).info.experiment_id
        with _lock:
            _experiment_of[parent_run_id] = experiment
    # The driver's identity (no heartbeat thread per child: the parent's heartbeat speaks for it, see .orphans).
    run = c.create_run(experiment, run_name=name,
                       tags={**driver_tags(), **_tags(tags or {}), PARENT_TAG: parent_run_id})
    log_params(run.info.run_id, params)
    return run.info.run_id


def _history_metrics(history: Mapping[str, list[float]]) -> list[Metric]:
    metrics: list[Metric] = []
    for step in range(max((len(v) for v in history.values()), default=0)):
        metrics.extend(metric_points({k: v[step] for k, v in history.items() if step < len(v)}, step))
    return metrics


def end_run(run_id: str, status: str, tags: Mapping[str, Any] | None = None, failure: str | None = None, *,
            history: Mapping[str, list[float]] | None = None, metrics: Mapping[str, float] | None = None) -> None:
    """Log ``history`` (per epoch, steps 0, 1, ...), final ``metrics`` (step 0) and ``tags``, then end the run.

    ``status``: ``FINISHED``, ``FAILED`` (with ``failure`` as ``nnpipe.failure``) or ``KILLED``.
    A trial's whole record usually fits one ``log_batch``.
    """
    logged = _history_metrics(history or {}) + metric_points(metrics or {}, 0)
    all_tags = _tags({**(tags or {}), **({FAILURE_TAG: failure} if failure else {})})
    tag_items = [RunTag(k, v) for k, v in all_tags.items()]
    if len(logged) <= BATCH_METRICS and len(tag_items) <= BATCH_TAGS:
        if logged or tag_items:
            client().log_batch(run_id, metrics=logged, tags=tag_items)
    else:
        log_metric_points(run_id, logged)
        set_run_tags(run_id, {t.key: t.value for t in tag_items})
    client().set_terminated(run_id, status)


def running_children(parent_run_id: str) -> list[str]:
    """Ids of the runs nested under ``parent_run_id`` that are still RUNNING (asked of the store, not remembered).

    An interrupt can land between the store creating a child run and its
    caller learning the id: only the store knows about such a run.
    """
    c = client()
    experiment = c.get_run(parent_run_id).info.experiment_id
    found = c.search_runs([experiment], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' "
                                                      "and attributes.status = 'RUNNING'", max_results=1000)
    return [r.info.run_id for r in found]


def log_history(run_id: str, history: Mapping[str, list[float]]) -> int:
    """Log a whole per-epoch history (``{"val/loss": [...], ...}``) at steps 0, 1, ... in batches; returns the count."""
    metrics = _history_metrics(history)
    log_metric_points(run_id, metrics)
    return len(metrics)


def log_artifact(run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    """Upload one local file to the run's artefacts."""
    client().log_artifact(run_id, str(path), artifact_path)


def experiment_id(name: str) -> str:
    """The id of experiment ``name`` (created if missing)."""
    return get_or_create_experiment(name)


__all__ = ["end_run", "experiment_id", "log_artifact", "log_history", "start_child_run"]
