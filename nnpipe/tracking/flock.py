"""The kernel file lock under :mod:`nnpipe.tracking.locking` (and the SQLite store's creation).

Separate from ``locking`` so that :mod:`nnpipe.tracking.store` can create a
new SQLite database under the same lock without an import cycle.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from nnpipe.tracking.errors import LockTimeout

ENV_LOCK_TIMEOUT = "NNPIPE_LOCK_TIMEOUT"
DEFAULT_TIMEOUT = 120.0


def sqlite_lock_path(db: Path) -> Path:
    """``<db>.nnpipe.lock`` beside a SQLite database: seen by every process that can write it."""
    return db.with_name(db.name + ".nnpipe.lock")


@contextmanager
def file_lock(path: Path, timeout: float | None = None, poll: float = 0.05) -> Iterator[Path]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block.

    Parameters
    ----------
    timeout : float, optional
        Seconds to wait before raising :class:`LockTimeout`; default
        ``NNPIPE_LOCK_TIMEOUT`` or 120.
    poll : float
        Seconds between attempts (non-blocking attempts keep the timeout honest).
    """
    if timeout is None:
        timeout = float(os.environ.get(ENV_LOCK_TIMEOUT) or DEFAULT_TIMEOUT)
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
