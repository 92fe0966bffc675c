"""Noticing lost workers and a lost scheduler in seconds, not after a 30 s connect timeout.

A call to a dead worker's actor fails only when its connection attempt times
out (``distributed.comm.timeouts.connect``, 30 s by default). The scheduler
knows sooner: it removes a worker whose process died as soon as the
connection drops (or its heartbeats stop) and publishes a ``remove-worker``
event on the ``all`` topic. :class:`LossWatch` subscribes to that topic and
fails every pending call to that worker at once with :class:`.rpc.WorkerLost`;
the comm error stays the fallback. It also counts ``add-worker`` events, so
that a pool knows at once when a replacement worker has come.

A lost scheduler shows as the client leaving the ``running`` state; after
:data:`SCHEDULER_GRACE_S` without it the run stops with :class:`SchedulerLost`.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
from typing import Any

from nnpipe.distributed.rpc import WorkerLost

log = logging.getLogger("nnpipe.distributed")

SCHEDULER_GRACE_S = 10.0  # the client reconnects on its own within this; longer means the scheduler is gone
RESUME_HINT = ("resume from the last checkpoint with `nnpipe train --resume-from RUN_ID` (or the same "
               "TrainConfig.checkpoint_dir through the API)")


class SchedulerLost(RuntimeError):
    """The Dask scheduler stopped answering; the run cannot place or rebuild anything."""


class LossWatch:
    """Fails pending trainer calls as soon as the scheduler removes their worker."""

    def __init__(self, client: Any):
        self.client = client
        # Kept: a closed client forgets its scheduler, and the message must still name it.
        self.address = client.scheduler.address if client is not None else None
        self.removed: set[str] = set()
        self.added = 0  # workers the scheduler added since the watch began (``add-worker`` events)
        self._pending: dict[str, set[cf.Future]] = {}
        self._lock = threading.Lock()
        self._away_since: float | None = None
        self._subscribed = False
        if client is not None:
            try:
                client.subscribe_topic("all", self._on_event)
                self._subscribed = True
            except Exception as exc:  # an older scheduler: comm errors still catch the loss
                log.info("no scheduler events (%r); lost workers are noticed by comm errors only", exc)

    def _on_event(self, event: Any) -> None:
        msg = event[1] if isinstance(event, (tuple, list)) and len(event) == 2 else event
        if isinstance(msg, dict) and msg.get("action") == "remove-worker" and msg.get("worker"):
            self.worker_removed(msg["worker"])
        elif isinstance(msg, dict) and msg.get("action") == "add-worker":
            self.added += 1

    def worker_removed(self, address: str) -> None:
        """Mark ``address`` gone and fail its pending calls."""
        with self._lock:
            self.removed.add(address)
            pending = self._pending.pop(address, set())
        for fut in pending:
            _settle(fut, exc=WorkerLost(f"worker {address} removed by the scheduler (process died or left)"))

    def track(self, address: str, inner: cf.Future) -> cf.Future:
        """A future that follows ``inner``, or fails as soon as ``address`` is removed."""
        outer: cf.Future = cf.Future()
        with self._lock:
            if address in self.removed:
                _settle(outer, exc=WorkerLost(f"worker {address} was removed by the scheduler"))
                inner.cancel()
                return outer
            self._pending.setdefault(address, set()).add(outer)

        def relay(f: cf.Future) -> None:
            with self._lock:
                self._pending.get(address, set()).discard(outer)
            if f.cancelled():
                _settle(outer, exc=WorkerLost(f"call to {address} cancelled"))
            elif f.exception() is not None:
                _settle(outer, exc=f.exception())
            else:
                _settle(outer, result=f.result())

        inner.add_done_callback(relay)
        return outer

    def check_scheduler(self) -> None:
        """Raise :class:`SchedulerLost` once the client has been away from the scheduler too long."""
        if self.client is None:
            return
        status = getattr(self.client, "status", "running")
        if status in ("running", "newly-created"):
            self._away_since = None
            return
        now = time.monotonic()
        if self._away_since is None:
            self._away_since = now
        if status == "closed" or now - self._away_since > SCHEDULER_GRACE_S:
            raise SchedulerLost(f"lost the Dask scheduler at {self.address} (client {status} for "
                                f"{now - self._away_since:.0f} s); the run stopped: {RESUME_HINT}")

    def close(self) -> None:
        if self._subscribed:
            try:
                self.client.unsubscribe_topic("all")
            except Exception:  # the client may already be gone
                pass
            self._subscribed = False


def _settle(fut: cf.Future, result: Any = None, exc: BaseException | None = None) -> None:
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)
    except cf.InvalidStateError:  # already failed by the scheduler's word, or the other way round
        pass
