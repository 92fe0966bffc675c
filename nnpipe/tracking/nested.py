"""Child runs driven from one thread for many concurrent jobs (tuning trials), without MLflow's active-run state.

MLflow's fluent API keeps one active run per thread; a driver that has K
trials in flight opens, fills and ends their runs by id instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from mlflow.entities import Metric

from nnpipe.tracking.runs import FAILURE_TAG, _log_metrics, _metrics, get_or_create_experiment, log_params, set_run_tags
from nnpipe.tracking.store import client

PARENT_TAG = "mlflow.parentRunId"


def start_child_run(parent_run_id: str, name: str, params: Mapping[str, Any],
                    tags: Mapping[str, Any] | None = None) -> str:
    """A RUNNING run nested under ``parent_run_id`` (same experiment) with ``params``; returns its id."""
    c = client()
    parent = c.get_run(parent_run_id)
    run = c.create_run(parent.info.experiment_id, run_name=name, tags={PARENT_TAG: parent_run_id})
    run_id = run.info.run_id
    log_params(run_id, params)
    set_run_tags(run_id, dict(tags or {}))
    return run_id


def end_run(run_id: str, status: str, tags: Mapping[str, Any] | None = None, failure: str | None = None) -> None:
    """Tag and end a run: ``FINISHED``, ``FAILED`` (with ``failure`` as ``nnpipe.failure``) or ``KILLED``."""
    set_run_tags(run_id, {**(tags or {}), **({FAILURE_TAG: failure} if failure else {})})
    client().set_terminated(run_id, status)


def log_history(run_id: str, history: Mapping[str, list[float]]) -> int:
    """Log a whole per-epoch history (``{"val/loss": [...], ...}``) at steps 0, 1, ... in batches; returns the count."""
    metrics: list[Metric] = []
    for step in range(max((len(v) for v in history.values()), default=0)):
        metrics.extend(_metrics({k: v[step] for k, v in history.items() if step < len(v)}, step))
    _log_metrics(run_id, metrics)
    return len(metrics)


def log_artifact(run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    """Upload one local file to the run's artefacts."""
    client().log_artifact(run_id, str(path), artifact_path)


def experiment_id(name: str) -> str:
    """The id of experiment ``name`` (created if missing)."""
    return get_or_create_experiment(name)


__all__ = ["end_run", "experiment_id", "log_artifact", "log_history", "start_child_run"]
