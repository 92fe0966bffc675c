"""Who else hears about a running pipeline: progress listeners, announced links, trial listeners.

Listeners outside Prefect (the CLI's progress bar, its per-trial lines, its
printed links) want every epoch, link or trial of the trainings started while
they listen. They are plain lists, not flow parameters: callables are neither
serialisable nor part of a run's configuration.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Callable, Iterator

from prefect import get_run_logger

from nnpipe.results import Callback

_LISTENERS: list[Callback] = []
_LISTENERS_LOCK = threading.Lock()


@contextmanager
def registered(listeners: list[Any], item: Any) -> Iterator[None]:
    """``item`` is in ``listeners`` for the block (one lock guards every listener list)."""
    with _LISTENERS_LOCK:
        listeners.append(item)
    try:
        yield
    finally:
        with _LISTENERS_LOCK:
            listeners.remove(item)


def progress_listener(callback: Callback) -> AbstractContextManager[None]:
    """Call ``callback(step, logs)`` for every epoch or round of trainings started inside the block."""
    return registered(_LISTENERS, callback)


_ANNOUNCERS: list[Callable[[str], None]] = []


def announcements(echo: Callable[[str], None]) -> AbstractContextManager[None]:
    """Call ``echo(line)`` for every link a training in the block announces (MLflow run, dashboards)."""
    return registered(_ANNOUNCERS, echo)


def announce(line: str) -> None:
    """Log ``line`` and show it to whoever listens (the CLI prints it even without ``-v``)."""
    try:
        get_run_logger().info("%s", line)
    except Exception:  # outside a flow or task run: no run logger
        pass
    for echo in list(_ANNOUNCERS):
        echo(line)


_OUTCOMES: list[Callable[[dict[str, Any]], None]] = []


def outcome_listener(callback: Callable[[dict[str, Any]], None]) -> AbstractContextManager[None]:
    """Call ``callback(result)`` when a training in the block has its final result in MLflow (before Prefect's share).

    The CLI keeps it, so that a Prefect server lost at the end does not lose what the run recorded.
    """
    return registered(_OUTCOMES, callback)


def report_outcome(result: dict[str, Any]) -> None:
    """Hand a training's final result to every outcome listener."""
    for cb in list(_OUTCOMES):
        cb(result)


def notify(step: int, logs: dict[str, float]) -> None:
    """Pass one epoch's logs to every progress listener (a training callback)."""
    for cb in list(_LISTENERS):
        cb(step, logs)


def format_logs(logs: dict[str, float]) -> str:
    """One epoch's headline metrics as ``key=value`` pairs, the way the console and the flow log show them."""
    keys = [k for k in ("train/loss", "train/accuracy", "val/loss", "val/accuracy", "val/mse", "dist/staleness") if k in logs]
    if logs.get("dist/workers_lost"):  # the run carries on without them: say so on every line from then on
        keys.append("dist/workers_lost")
    return " ".join(f"{k}={logs[k]:.4g}" for k in keys)


_TRIAL_LISTENERS: list[Callable[[Any], None]] = []


def trial_listener(callback: Callable[[Any], None]) -> AbstractContextManager[None]:
    """Call ``callback(TrialResult)`` as each trial of a study started inside the block ends."""
    return registered(_TRIAL_LISTENERS, callback)


def notify_trial(result: Any) -> None:
    """Pass one finished trial to every trial listener."""
    for cb in list(_TRIAL_LISTENERS):
        cb(result)
