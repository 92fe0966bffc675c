"""Model registry: register versions, look them up, list them with their runs' metrics.

Versions are numbered by MLflow. Each new version gets the alias
``candidate``; ``champion`` (the served one) moves only through
:mod:`nnpipe.tracking.promotion`. Aliases, never the deprecated stages.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Mapping

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException

from nnpipe.tracking import history, integrity
from nnpipe.tracking.errors import RegistrationRefused, UnknownModelError, UnknownVersionError
from nnpipe.tracking.locking import store_lock
from nnpipe.tracking.store import client

CANDIDATE = "candidate"
CHAMPION = "champion"
RUN_ID_TAG = "nnpipe.run_id"


def _not_found(exc: MlflowException) -> bool:
    return exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or "not found" in str(exc).lower()


def _filter_name(name: str) -> str:
    quote = '"' if "'" in name else "'"
    return f"name={quote}{name}{quote}"


def get_registered(name: str, c: MlflowClient | None = None) -> RegisteredModel:
    """The registered model ``name``; :class:`UnknownModelError` listing known names if absent."""
    c = c or client()
    if not isinstance(name, str) or not name.strip():
        raise UnknownModelError(f"model name must be a non-empty string, got {name!r}")
    try:
        return c.get_registered_model(name)
    except MlflowException as exc:
        if not _not_found(exc):
            raise
    known = sorted(m.name for m in c.search_registered_models(max_results=50))
    raise UnknownModelError(
        f"no registered model named {name!r}; known models: {known if known else 'none'}"
    ) from None


def version_number(version: Any) -> int:
    """``version`` as a positive int (accepts ``3``, ``"3"``, ``"v3"``); ValueError quoting it otherwise."""
    text = str(version).strip()
    text = text[1:] if text[:1] in ("v", "V") else text
    try:
        number = int(text)
    except ValueError:
        raise UnknownVersionError(f"model version must be a positive integer, got {version!r}") from None
    if number < 1:
        raise UnknownVersionError(f"model version must be a positive integer, got {version!r}")
    return number


def get_version(name: str, version: Any, c: MlflowClient | None = None) -> ModelVersion:
    """Version ``version`` of model ``name``; Unknown*Error naming what exists if absent."""
    c = c or client()
    get_registered(name, c)
    number = version_number(version)
    try:
        return c.get_model_version(name, str(number))
    except MlflowException as exc:
        if not _not_found(exc):
            raise
    have = sorted(int(v.version) for v in c.search_model_versions(_filter_name(name)))
    raise UnknownVersionError(
        f"model {name!r} has no version {version!r}; versions: {have if have else 'none'}"
    ) from None


def alias_version(name: str, alias: str, c: MlflowClient | None = None) -> int | None:
    """The version ``alias`` points to, or None if the alias is not set."""
    c = c or client()
    target = get_registered(name, c).aliases.get(alias)
    return None if target is None else int(target)


def register_model(
    model_uri: str, name: str, run_id: str, tags: Mapping[str, Any] | None = None
) -> int:
    """Register ``model_uri`` as a new version of ``name`` and point ``candidate`` at it.

    Parameters
    ----------
    model_uri : str
        From :func:`nnpipe.tracking.log_model` (``models:/m-...`` or ``runs:/...``).
    name : str
        Registered model name (created on first use).
    run_id : str
        The run that produced the model; must not have FAILED or been KILLED.
    tags : mapping, optional
        Tags for the new version.

    Returns
    -------
    int
        The new version number (distinct even when two runs register at once).

    Raises
    ------
    RegistrationRefused
        If the run ended FAILED or KILLED.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"registered model name must be a non-empty string, got {name!r}")
    c = client()
    status = c.get_run(run_id).info.status
    if status in ("FAILED", "KILLED"):
        reason = c.get_run(run_id).data.tags.get("nnpipe.failure", "no reason recorded")
        raise RegistrationRefused(
            f"run {run_id!r} ended {status} ({reason}); a failed run's model is not registered"
        )
    all_tags = {RUN_ID_TAG: run_id, **{k: str(v) for k, v in (tags or {}).items()}}
    # Under the store lock: SQLite writers from two processes would otherwise
    # race on "create the registered model" and on the version counter.
    with store_lock():
        mv = mlflow.register_model(model_uri, name, tags=all_tags)
        number = int(mv.version)
        previous = alias_version(name, CANDIDATE, c)
        c.set_registered_model_alias(name, CANDIDATE, str(number))
        history.record(c, name, CANDIDATE, previous, number, action="register",
                       reason=f"registered from run {run_id}")
    integrity.record(c, name, number)  # SHA-256 of every model file, checked before any load (outside the lock)
    return number


def _iso(ms: int | None) -> str | None:
    if not ms:
        return None
    return _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def list_versions(name: str) -> list[dict[str, Any]]:
    """Every version of ``name``, oldest first, with aliases, status and its run's metrics.

    Returns
    -------
    list of dict
        Keys: ``version`` (int), ``aliases`` (list of str), ``status`` (registry
        status), ``run_id``, ``run_status``, ``created`` (ISO time), ``metrics``
        (the run's latest value per key), ``gate`` (the promotion gate's
        ``nnpipe.gate.*`` tags without the prefix), ``tags``, ``source``.
    """
    c = client()
    model = get_registered(name, c)
    by_version: dict[int, list[str]] = {}
    for alias, v in model.aliases.items():
        by_version.setdefault(int(v), []).append(alias)
    rows = []
    for mv in sorted(c.search_model_versions(_filter_name(name)), key=lambda m: int(m.version)):
        number = int(mv.version)
        metrics: dict[str, float] = {}
        run_state = None
        run_id = mv.run_id or mv.tags.get(RUN_ID_TAG)
        if run_id:
            try:
                run = c.get_run(run_id)
                metrics, run_state = dict(run.data.metrics), run.info.status
            except MlflowException:
                run_state = "DELETED"  # the run was removed; the version still serves
        rows.append({
            "version": number,
            "aliases": sorted(by_version.get(number, [])),
            "status": mv.status,
            "run_id": run_id,
            "run_status": run_state,
            "created": _iso(mv.creation_timestamp),
            "metrics": metrics,
            "gate": {k[len("nnpipe.gate."):]: v for k, v in mv.tags.items() if k.startswith("nnpipe.gate.")},
            "tags": dict(mv.tags),
            "source": mv.source,
        })
    return rows


# Reads of the alias history live here, beside the registry lookups they need,
# so that history.py (the record format) imports nothing back from this module.
def alias_history(name: str, alias: str | None = None) -> list[dict[str, Any]]:
    """Alias moves of model ``name`` (optionally of one ``alias``), oldest first.

    Raises
    ------
    UnknownModelError
    """
    events = history._events(get_registered(name).tags)
    return [e for e in events if alias is None or e.get("alias") == alias]


def previous_champion(name: str, current: int | None) -> int | None:
    """The champion before ``current`` according to the history, or None."""
    stack = history.champion_stack(alias_history(name, "champion"))
    while stack and stack[-1] == current:
        stack.pop()
    # entries equal to current deeper down (an old reign) are skipped too
    stack = [v for v in stack if v != current]
    return stack[-1] if stack else None
