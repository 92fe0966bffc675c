"""Independent jobs on the cluster (one task each, e.g. tuning trials): wait for the first, tell a lost worker.

Kept here because this package is the only one that imports Dask; callers
hold futures and a client but never import ``distributed`` themselves.
"""

from __future__ import annotations

import uuid
import warnings
from typing import Any, Iterable

from distributed import CancelledError, KilledWorker, wait
from distributed.comm.core import CommClosedError


def _identity(obj: Any) -> Any:
    return obj


def place(client: Any, obj: Any, name: str = "data") -> Any:
    """``obj`` on the cluster as a future every job can take, rebuilt if the worker holding it dies.

    Not a scatter: the Active Memory Manager drops "extra" replicas of a
    broadcast, and a scattered key lost with its worker cannot be rebuilt, so
    every job depending on it would be cancelled. A task that returns ``obj``
    (embedded in the graph, as :mod:`.shards` does for shards) can be rerun.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ll]arge (graph|object).*")
        return client.submit(_identity, obj, key=f"nnpipe-{name}-{uuid.uuid4().hex[:12]}", pure=False)


def wait_first(futures: Iterable[Any], timeout: float | None = None) -> set[Any]:
    """The futures done once at least one is (an empty set after ``timeout`` seconds)."""
    futures = list(futures)
    if not futures:
        return set()
    try:
        done, _ = wait(futures, timeout=timeout, return_when="FIRST_COMPLETED")
    except TimeoutError:
        return set()
    except CancelledError:  # a cancelled future is done too: its result() raises, the caller decides
        return {f for f in futures if f.done()}
    return set(done)


def worker_lost(exc: BaseException) -> bool:
    """Whether a job's error means its worker died or vanished (worth a retry), not that the job failed."""
    return isinstance(exc, (KilledWorker, CommClosedError, CancelledError, OSError))
