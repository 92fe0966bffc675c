"""Model registry: register versions, look them up, list them with their runs' metrics.

Versions are numbered by MLflow. Each new version gets the alias
``candidate``; ``champion`` (the served one) moves only through
:mod:`nnpipe.tracking.promotion`. Aliases, never the deprecated stages.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any, Mapping

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException

from nnpipe.tracking import history, integrity, story
from nnpipe.tracking.errors import RegistrationRefused, UnknownModelError, UnknownVersionError
from nnpipe.tracking.locking import store_lock
from nnpipe.tracking.store import client

CANDIDATE = "candidate"
CHAMPION = story.CHAMPION
RUN_ID_TAG = story.RUN_ID_TAG


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
        sync_aliases_locked(c, name)
        previous = alias_version(name, CANDIDATE, c)
        c.set_registered_model_alias(name, CANDIDATE, str(number))
        history.record(c, name, CANDIDATE, previous, number, action="register",
                       reason=f"registered from run {run_id}")
        story.refresh(c, name, {number} | ({previous} if previous is not None else set()))
    integrity.record(c, name, number)  # SHA-256 of every model file, checked before any load (outside the lock)
    return number


def alias_history(name: str, alias: str | None = None) -> list[dict[str, Any]]:
    """Alias moves of model ``name`` (optionally of one ``alias``), oldest first.

    Moves made outside nnpipe appear once nnpipe has noticed them
    (:func:`sync_aliases`; ``nnpipe history`` syncs first).

    Raises
    ------
    UnknownModelError
    """
    c = client()
    get_registered(name, c)
    return [e for e in history.load_events(c, name) if alias is None or e.get("alias") == alias]


def previous_champion(name: str, current: int | None, existing: set[int] | None = None) -> int | None:
    """The champion before ``current`` according to the history, or None; only one of ``existing`` when given."""
    return history.previous_in(alias_history(name, CHAMPION), current, existing=existing)


def champion_model(name: str) -> tuple[int, Any] | None:
    """The champion's version and its :class:`nnpipe.model.Model` (files verified first), or None if none.

    What a warm start begins from: the network's spec and parameters, read
    from the registered files (no pickle), as serving reads them.
    """
    c = client()
    try:
        version = int(c.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:  # no such model, or no champion yet
        return None
    return version, version_model(name, version)


def version_model(name: str, version: int) -> Any:
    """Version ``version`` of ``name`` as a :class:`nnpipe.model.Model`, read from its verified files."""
    from nnpipe.model import Model

    with integrity.verified_copy(name, version, client()) as local:
        return Model.load(next(local.rglob("model.json")).parent)


def sync_aliases_locked(c: MlflowClient, name: str) -> list[dict[str, Any]]:
    """Record alias moves made outside nnpipe (caller holds the store lock); returns the new events.

    Compares where each alias points now with where its last recorded move
    left it. A difference is a move nnpipe did not make (the MLflow UI's alias
    dialog, another client): it is recorded as action ``outside``, actor
    unknown, at the time it was noticed, with the metric on both sides.
    """
    events = history.load_events(c, name)
    model = c.get_registered_model(name)
    live = {alias: int(v) for alias, v in model.aliases.items()}
    recorded = history.last_recorded(events)
    metric, _ = story.promotion_metric(model.tags)
    found = []
    for alias in sorted(set(live) | {a for a, v in recorded.items() if v is not None}):
        was, now = recorded.get(alias), live.get(alias)
        if was == now:
            continue
        extra: dict[str, Any] = {}
        if alias == CHAMPION:
            extra = {"metric": metric, "from_score": _score(c, name, was, metric),
                     "to_score": _score(c, name, now, metric)}
        what = f"set to v{now}" if now is not None else "removed"
        event = history.record(
            c, name, alias, was, now, action="outside", actor=history.OUTSIDE_ACTOR,
            reason=f"alias {alias!r} {what} outside nnpipe (MLflow UI or another client); "
                   f"nnpipe last recorded {'none' if was is None else f'v{was}'}", detected=True, **extra)
        found.append(event)
        events.append(event)
    if found:
        story.refresh(c, name, {v for e in found for v in (e["from"], e["to"]) if v is not None}, events)
    return found


def sync_aliases(name: str) -> list[dict[str, Any]]:
    """:func:`sync_aliases_locked` under the store lock, for readers (``models``, ``history``)."""
    c = client()
    model = get_registered(name, c)
    if model.tags.get(story.RECORDED_TAG) == story.aliases_text(model.aliases):
        # nothing moved since nnpipe last recorded: a reader need not queue behind registrations and gates
        return []
    with store_lock():
        return sync_aliases_locked(c, name)


def _score(c: MlflowClient, name: str, version: int | None, metric: str) -> float | None:
    """``metric`` of the run behind ``version`` (None when unknown or not finite)."""
    if version is None:
        return None
    try:
        mv = c.get_model_version(name, str(version))
        run_id = mv.run_id or mv.tags.get(RUN_ID_TAG)
        value = c.get_run(run_id).data.metrics.get(metric) if run_id else None
    except MlflowException:
        return None
    return float(value) if value is not None and math.isfinite(value) else None


def _iso(ms: int | None) -> str | None:
    if not ms:
        return None
    return _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def list_models() -> list[dict[str, Any]]:
    """Every registered model in the store, by name, with its aliases and gate metric.

    Returns
    -------
    list of dict
        Keys: ``name``, ``versions`` (how many), ``champion`` and ``candidate``
        (version numbers or None), ``metric`` (the gate's metric), ``updated`` (ISO time).
    """
    c = client()
    rows, token = [], None
    while True:  # the store pages its answer
        page = c.search_registered_models(max_results=100, page_token=token)
        for m in page:
            metric, _ = story.promotion_metric(m.tags)
            rows.append({
                "name": m.name,
                "versions": len(c.search_model_versions(_filter_name(m.name))),
                "champion": int(m.aliases[CHAMPION]) if CHAMPION in m.aliases else None,
                "candidate": int(m.aliases[CANDIDATE]) if CANDIDATE in m.aliases else None,
                "metric": metric,
                "updated": _iso(m.last_updated_timestamp),
            })
        token = page.token
        if not token:
            return sorted(rows, key=lambda r: r["name"])


def list_versions(name: str) -> list[dict[str, Any]]:
    """Every version of ``name``, oldest first, with aliases, status and its run's metrics.

    Returns
    -------
    list of dict
        Keys: ``version`` (int), ``aliases`` (list of str), ``status`` (registry
        status), ``run_id``, ``run_status``, ``created`` (ISO time), ``metrics``
        (the run's latest value per key), ``gate`` (the promotion gate's
        verdict, :func:`nnpipe.tracking.story.gate_record`), ``champion`` (when it was
        champion, from the history: ``since ...`` or its last reign), ``tags``, ``source``.
    """
    c = client()
    model = get_registered(name, c)
    spans = story.reigns(history.load_events(c, name))
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
            "gate": story.gate_record(mv.tags),
            "champion": story.status_short(number, model.aliases, spans.get(number, [])),
            "tags": dict(mv.tags),
            "source": mv.source,
        })
    return rows
