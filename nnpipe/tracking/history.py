"""Alias-move history (MLflow keeps none): one JSON document per registered model.

Where it lives: a *ledger run* named ``alias history: <model>`` in the
experiment ``nnpipe-registry-history``, tagged ``nnpipe.history_of=<model>``,
holding the artefact ``alias_history.json`` (a list of events, oldest first).
One document rather than one registered-model tag per event: the tags showed
in the MLflow UI as raw JSON with a delete icon each, and a description table
(:mod:`nnpipe.tracking.story`) is what people read there. The ledger run is
browsable too (experiment ``nnpipe-registry-history``).

An event: ``seq``, ``time`` (UTC ISO), ``actor``, ``alias``, ``from``, ``to``
(versions; either may be null), ``action`` (``register``, ``gate``,
``promote``, ``rollback``, ``outside``), ``reason``, and for ``champion``
moves ``metric``, ``from_score``, ``to_score``. ``outside`` events are moves
nnpipe did not make (the MLflow UI, another client): ``time`` is when nnpipe
noticed and ``actor`` is unknown.

Writers hold the store lock (:mod:`nnpipe.tracking.locking`); the document is
rewritten whole under it. Histories written by older nnpipe versions as
``nnpipe.alias_history.<seq>`` tags are read, carried into the ledger on the
next write, and those tags removed.

This module takes a client and a model name and never validates the name: the
registry (:mod:`nnpipe.tracking.registry`) does that and imports this, never
the other way round.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from nnpipe.tracking.runs import get_or_create_experiment

LEDGER_EXPERIMENT = "nnpipe-registry-history"
LEDGER_TAG = "nnpipe.history_of"
ARTIFACT = "alias_history.json"
LEGACY_PREFIX = "nnpipe.alias_history."
ENV_ACTOR = "NNPIPE_ACTOR"
OUTSIDE_ACTOR = "unknown (outside nnpipe)"
MAX_REASON = 2000


def default_actor() -> str:
    """``NNPIPE_ACTOR`` if set, else ``user@host``."""
    if os.environ.get(ENV_ACTOR):
        return os.environ[ENV_ACTOR]
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def ledger_run_id(c: MlflowClient, name: str) -> str | None:
    """The id of ``name``'s ledger run, or None before the first move was recorded."""
    exp = c.get_experiment_by_name(LEDGER_EXPERIMENT)
    if exp is None:
        return None
    runs = c.search_runs([exp.experiment_id], filter_string=f"tags.`{LEDGER_TAG}` = {_quote(name)}",
                         order_by=["attributes.start_time ASC"], max_results=1)
    return runs[0].info.run_id if runs else None


def _legacy_events(c: MlflowClient, name: str) -> list[dict[str, Any]]:
    out = []
    for key, value in c.get_registered_model(name).tags.items():
        if key.startswith(LEGACY_PREFIX):
            try:
                out.append(json.loads(value))
            except json.JSONDecodeError:
                continue  # a hand-edited tag; skip rather than fail the whole history
    return sorted(out, key=lambda e: e.get("seq", 0))


def _read_ledger(c: MlflowClient, run_id: str) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="nnpipe-history-") as tmp:
        try:
            path = c.download_artifacts(run_id, ARTIFACT, tmp)
        except (MlflowException, OSError):
            return []  # the run exists but its document does not (yet)
        return json.loads(Path(path).read_text())


def load_events(c: MlflowClient, name: str) -> list[dict[str, Any]]:
    """Every recorded move of ``name``'s aliases, oldest first (ledger, else legacy tags)."""
    run_id = ledger_run_id(c, name)
    events = _read_ledger(c, run_id) if run_id else []
    return events or _legacy_events(c, name)


def _write(c: MlflowClient, name: str, events: list[dict[str, Any]]) -> str:
    run_id = ledger_run_id(c, name)
    if run_id is None:
        exp_id = get_or_create_experiment(LEDGER_EXPERIMENT)
        run = c.create_run(exp_id, run_name=f"alias history: {name}", tags={
            LEDGER_TAG: name,
            "mlflow.note.content": f"Every move of the aliases of registered model `{name}`, kept by nnpipe "
                                   f"in `{ARTIFACT}` (read it with `nnpipe history {name}`).",
        })
        run_id = run.info.run_id
        c.set_terminated(run_id, "FINISHED")
    c.log_text(run_id, json.dumps(events, indent=1), ARTIFACT)
    for key in [k for k in c.get_registered_model(name).tags if k.startswith(LEGACY_PREFIX)]:
        c.delete_registered_model_tag(name, key)  # migrated: the ledger holds them now
    return run_id


def record(
    c: MlflowClient,
    name: str,
    alias: str,
    from_version: int | None,
    to_version: int | None,
    action: str,
    reason: str | None = None,
    actor: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Append one alias move to ``name``'s history (caller holds the store lock); returns the event.

    ``extra`` adds fields (``metric``, ``from_score``, ``to_score``, ...).
    """
    events = load_events(c, name)
    event = {
        "seq": max((e.get("seq", 0) for e in events), default=0) + 1,
        "time": now_iso(),
        "actor": actor or default_actor(),
        "alias": alias,
        "from": None if from_version is None else int(from_version),
        "to": None if to_version is None else int(to_version),
        "action": action,
        "reason": (reason or "")[:MAX_REASON],
        **{k: v for k, v in extra.items() if v is not None},
    }
    _write(c, name, [*events, event])
    return event


def last_recorded(events: list[dict[str, Any]]) -> dict[str, int | None]:
    """Where each alias pointed according to the last recorded move of it."""
    out: dict[str, int | None] = {}
    for e in events:
        out[e.get("alias")] = e.get("to")
    return out


def champion_stack(events: list[dict[str, Any]], alias: str = "champion") -> list[int]:
    """Replay moves of ``alias`` into a stack of reigns: a promotion pushes, a rollback pops back.

    A rollback to a version already on the stack truncates the stack there, so
    successive rollbacks walk further back (v3 -> v2 -> v1) instead of
    bouncing between the last two. Outside moves push like promotions (the
    version a UI user chose is a reign like any other); an alias removed
    outside nnpipe pushes nothing.
    """
    stack: list[int] = []
    for e in events:
        if e.get("alias") != alias or e.get("to") is None:
            continue
        to = int(e["to"])
        if e.get("action") == "rollback" and to in stack:
            del stack[len(stack) - 1 - stack[::-1].index(to) + 1 :]
        elif not stack or stack[-1] != to:
            stack.append(to)
    return stack


def previous_in(events: list[dict[str, Any]], current: int | None, alias: str = "champion",
                existing: set[int] | None = None) -> int | None:
    """The champion before ``current`` according to ``events``, or None; only one of ``existing`` when given.

    A version deleted in MLflow since its reign is passed over: the one before it is the rollback target.
    """
    stack = [v for v in champion_stack(events, alias) if v != current and (existing is None or v in existing)]
    return stack[-1] if stack else None
