"""Alias-move history, kept on the registered model (MLflow keeps none).

Each move is one registered-model tag ``nnpipe.alias_history.<seq>`` whose
value is a JSON object: ``seq``, ``time`` (UTC ISO), ``actor``, ``alias``,
``from``, ``to`` (versions, ``from`` may be null), ``action`` (``register``,
``gate``, ``promote``, ``rollback``) and ``reason``. One tag per event rather
than one growing JSON document: writes never rewrite old entries, and no tag
value approaches MLflow's size limit. Sequence numbers are allocated under the
store lock (:mod:`nnpipe.tracking.locking`), which every writer here holds.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import json
import os
import socket
from typing import Any

from mlflow import MlflowClient

PREFIX = "nnpipe.alias_history."
ENV_ACTOR = "NNPIPE_ACTOR"
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


def _events(tags: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for key, value in tags.items():
        if key.startswith(PREFIX):
            try:
                out.append(json.loads(value))
            except json.JSONDecodeError:
                continue  # a hand-edited tag; skip rather than fail the whole history
    return sorted(out, key=lambda e: e.get("seq", 0))


def record(
    c: MlflowClient,
    name: str,
    alias: str,
    from_version: int | None,
    to_version: int,
    action: str,
    reason: str | None = None,
    actor: str | None = None,
) -> dict[str, Any]:
    """Append one alias move to ``name``'s history (caller holds the store lock); returns the event."""
    tags = c.get_registered_model(name).tags
    seq = max((e.get("seq", 0) for e in _events(tags)), default=0) + 1
    event = {
        "seq": seq,
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
        "actor": actor or default_actor(),
        "alias": alias,
        "from": None if from_version is None else int(from_version),
        "to": int(to_version),
        "action": action,
        "reason": (reason or "")[:MAX_REASON],
    }
    c.set_registered_model_tag(name, f"{PREFIX}{seq:06d}", json.dumps(event))
    return event


def champion_stack(events: list[dict[str, Any]], alias: str = "champion") -> list[int]:
    """Replay moves of ``alias`` into a stack of reigns: a promotion pushes, a rollback pops back.

    A rollback to a version already on the stack truncates the stack there, so
    successive rollbacks walk further back (v3 -> v2 -> v1) instead of
    bouncing between the last two.
    """
    stack: list[int] = []
    for e in events:
        if e.get("alias") != alias:
            continue
        to = int(e["to"])
        if e.get("action") == "rollback" and to in stack:
            del stack[len(stack) - 1 - stack[::-1].index(to) + 1 :]
        elif not stack or stack[-1] != to:
            stack.append(to)
    return stack
