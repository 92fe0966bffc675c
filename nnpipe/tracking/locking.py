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

import fcntl
import hashlib
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from nnpipe.tracking.errors import LockTimeout
from nnpipe.tracking.store import current_uri, sqlite_path

ENV_LOCK_DIR = "NNPIPE_LOCK_DIR"
ENV_LOCK_TIMEOUT = "NNPIPE_LOCK_TIMEOUT"
DEFAULT_TIMEOUT = 120.0


def lock_path(uri: str | None = None) -> Path:
    """The lock file guarding registry decisions for the store at ``uri``."""
    uri = uri or current_uri()
    db = sqlite_path(uri)
    if db is not None:
        return db.with_name(db.name + ".nnpipe.lock")
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
    if timeout is None:
        timeout = float(os.environ.get(ENV_LOCK_TIMEOUT) or DEFAULT_TIMEOUT)
    path = lock_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LockTimeout(
                        f"could not take the registry lock {str(path)!r} within {timeout:g}s"
                    ) from None
                time.sleep(poll)
        try:
            yield path
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
