"""A cross-process lock per tracking store, for read-decide-write steps on the registry.

MLflow has no compare-and-set on aliases and no transactions across calls, so
"read the champion's score, compare, move the alias, append to the history"
must not interleave between two runs that finish at once. We serialise those
steps with an advisory ``fcntl.flock`` on a lock file:

* SQLite store: ``<db>.nnpipe.lock`` next to the database. Every process that
  can write the database can see that file, so the lock covers exactly the
  processes that matter (and also keeps SQLite's own writer lock from
  timing out under two concurrent registrations).
* Any other store (e.g. an ``http://`` tracking server): a file named after a
  hash of the URI under ``NNPIPE_LOCK_DIR`` (default: the system temp dir).
  That serialises gates on one machine; for gates running on several machines
  point ``NNPIPE_LOCK_DIR`` at a shared filesystem with working ``flock``
  (NFSv4, most cluster filesystems).

Why a kernel lock rather than ``os.open(O_EXCL)`` lock files: ``flock`` is
released by the kernel when the holder dies, so a crashed gate never leaves a
stale lock behind. Why not re-read-and-verify alone: two gates can both verify
before either's write is visible, so verification narrows the race without
closing it. The gate still re-reads the alias after moving it (see
:mod:`nnpipe.tracking.promotion`) as a cheap check against a writer that does
not use this lock (the MLflow UI, another tool).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from nnpipe.tracking.flock import DEFAULT_TIMEOUT, ENV_LOCK_TIMEOUT, file_lock, sqlite_lock_path
from nnpipe.tracking.store import current_uri, sqlite_path

ENV_LOCK_DIR = "NNPIPE_LOCK_DIR"
__all__ = ["DEFAULT_TIMEOUT", "ENV_LOCK_DIR", "ENV_LOCK_TIMEOUT", "lock_path", "store_lock"]


def lock_path(uri: str | None = None) -> Path:
    """The lock file guarding registry decisions for the store at ``uri``."""
    uri = uri or current_uri()
    db = sqlite_path(uri)
    if db is not None:
        return sqlite_lock_path(db)
    digest = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    root = Path(os.environ.get(ENV_LOCK_DIR) or tempfile.gettempdir())
    return root / f"nnpipe-registry-{digest}.lock"


@contextmanager
def store_lock(uri: str | None = None, timeout: float | None = None, poll: float = 0.05) -> Iterator[Path]:
    """Hold the store's lock for the body of a ``with`` block.

    Parameters
    ----------
    uri : str, optional
        Tracking URI; defaults to the configured one.
    timeout : float, optional
        Seconds to wait before raising :class:`LockTimeout`; default
        ``NNPIPE_LOCK_TIMEOUT`` or 120.
    poll : float
        Seconds between attempts (non-blocking attempts keep the timeout honest).
    """
    with file_lock(lock_path(uri), timeout, poll) as path:
        yield path
