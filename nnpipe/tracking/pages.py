"""Keep the registry pages in step with the aliases: a sweep at command start and a watcher loop.

MLflow moves an alias (the UI's dialog, another client) without telling
anyone, and its page header shows the new ``@champion`` badge at once; the
descriptions nnpipe writes (:mod:`nnpipe.tracking.story`) and the history
(:mod:`nnpipe.tracking.history`) learn of the move only when nnpipe looks.
Two things look:

* :func:`sweep`, at the start of every ``nnpipe`` command that opens a
  store (``train``, ``tune``, ``sweep``, ``models``, ``promote``,
  ``rollback``, ``history``), for every registered model;
* :func:`watch`, a loop that sweeps every ``interval`` seconds (2 s by
  default): ``nnpipe models --watch`` runs it in the foreground, and a
  long-lived process (``nnpipe serve``) can run it in a thread.

A sweep costs one ``search_registered_models`` call when nothing moved: each
model carries the tag ``nnpipe.recorded_aliases`` (``candidate:v3
champion:v2``), written with every recorded move, and only a model whose
live aliases differ from it is synced under the store lock (the move
recorded as ``outside``, the descriptions rewritten). Between a move and the
next sweep the texts are behind but not false: every statement in them
carries its time (see :mod:`nnpipe.tracking.story`).

MLflow 3.17's webhooks (``model_version_alias.created``) could push the move
instead, but they are experimental, need the SQL backend and an HTTP
receiver that someone keeps running: polling works on every store (a SQLite
file with no server included) and needs no receiver.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from mlflow import MlflowClient

from nnpipe.tracking.registry import sync_aliases_locked
from nnpipe.tracking.story import RECORDED_TAG, aliases_text, mark_recorded
from nnpipe.tracking.store import client

WATCH_INTERVAL = 2.0  # seconds: the promise in docs/tracking.md is "within a few seconds"
log = logging.getLogger("nnpipe.tracking")


def stale_models(c: MlflowClient | None = None) -> list[str]:
    """Registered models whose live aliases differ from what nnpipe last recorded (one search per 100 models)."""
    c = c or client()
    out, token = [], None
    while True:
        page = c.search_registered_models(max_results=100, page_token=token)
        for m in page:
            if m.tags.get(RECORDED_TAG) != aliases_text(m.aliases) and (m.aliases or RECORDED_TAG in m.tags):
                out.append(m.name)
        token = page.token
        if not token:
            return out


def sweep(names: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Record every alias move nnpipe has not seen yet and rewrite those models' pages.

    Parameters
    ----------
    names : list of str, optional
        Only these models (default: every model whose aliases moved).

    Returns
    -------
    dict
        Model name to the ``outside`` events recorded now (models with none are left out).
    """
    from nnpipe.tracking.locking import store_lock

    c = client()
    todo = stale_models(c) if names is None else list(names)
    found: dict[str, list[dict[str, Any]]] = {}
    if not todo:
        return found
    with store_lock():
        for name in todo:
            events = sync_aliases_locked(c, name)
            if events:
                found[name] = events
            else:  # a store written before the tag existed: the history agrees, say so once
                mark_recorded(c, name, c.get_registered_model(name).aliases)
    return found


def sweep_quietly(warn: Callable[[str], None] | None = None) -> dict[str, list[dict[str, Any]]]:
    """:func:`sweep`, but a failure is one warning, never the command's failure (the command has its own work)."""
    try:
        return sweep()
    except Exception as exc:  # a store that refuses tags or a lock held too long: the command still runs
        message = f"could not bring the registry pages up to date: {type(exc).__name__}: {exc}"
        (warn or log.warning)(message)
        return {}


def sweep_at_start(uri: str, warn: Callable[[str], None] | None = None) -> dict[str, list[dict[str, Any]]]:
    """What every nnpipe command runs once it knows its store: :func:`sweep_quietly` (nothing for a store not yet created)."""
    from nnpipe.tracking.store import configure, sqlite_path

    db = sqlite_path(uri)
    if db is not None and not db.exists():
        return {}  # never create an empty store just to look at it
    configure(uri)
    return sweep_quietly(warn)


def describe_found(found: dict[str, list[dict[str, Any]]]) -> list[str]:
    """One line per outside move a sweep recorded: ``moved outside nnpipe: champion v2 -> v1 of iris-mlp; recorded ...``."""
    def v(x: Any) -> str:
        return "none" if x is None else f"v{x}"
    return [f"moved outside nnpipe: {e['alias']} {v(e['from'])} -> {v(e['to'])} of {name}; recorded in the history"
            for name, events in found.items() for e in events]


def watch(stop: threading.Event, interval: float = WATCH_INTERVAL,
          on_moves: Callable[[dict[str, list[dict[str, Any]]]], None] | None = None) -> None:
    """Sweep every ``interval`` seconds until ``stop`` is set; ``on_moves`` gets what each sweep found.

    Run it in a thread of a long-lived process, or in the foreground
    (``nnpipe models --watch``). An error in one sweep is logged and the
    next sweep tries again.
    """
    while not stop.is_set():
        found = sweep_quietly()
        if found and on_moves is not None:
            on_moves(found)
        stop.wait(interval)


def start_watcher(interval: float = WATCH_INTERVAL) -> tuple[threading.Thread, threading.Event]:
    """:func:`watch` in a daemon thread; set the returned event to stop it."""
    stop = threading.Event()
    thread = threading.Thread(target=watch, args=(stop, interval), name="nnpipe-pages-watch", daemon=True)
    thread.start()
    return thread, stop
