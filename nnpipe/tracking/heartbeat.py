"""A run's driver, named in its tags, and the heartbeat that says it is alive.

Every run :func:`nnpipe.tracking.training_run` opens carries its driver's
identity (host, pid, and the process's namespace and start time, so a reused
pid or a container with the same host name is never taken for the driver) and
a heartbeat tag that a daemon thread refreshes every :data:`HEARTBEAT_S`
seconds. :mod:`.orphans` reads them to tell a dead driver from a live one.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from functools import lru_cache

from nnpipe.tracking.store import client

log = logging.getLogger("nnpipe.tracking")

HOST_TAG = "nnpipe.driver.host"
PID_TAG = "nnpipe.driver.pid"
PROCESS_TAG = "nnpipe.driver.process"  # "<host|boot id|pid namespace>/<start time>": which process, exactly
HEARTBEAT_TAG = "nnpipe.heartbeat"  # unix seconds of the driver's last sign of life
HEARTBEAT_S = 15.0


@lru_cache(maxsize=1)
def namespace() -> str:
    """This host, boot and pid namespace: pids of two processes that share it are comparable."""
    parts = []
    for path, read in (("/proc/sys/kernel/random/boot_id", lambda p: open(p).read().strip()),
                       ("/proc/self/ns/pid", os.readlink)):
        try:
            parts.append(read(path))
        except OSError:  # not Linux: the host name alone decides, pids are checked as they are
            parts.append("")
    return f"{socket.gethostname()}|{'|'.join(parts)}"


def start_time(pid: int) -> float | None:
    """When process ``pid`` started (unix seconds), or None if there is none."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def driver_tags() -> dict[str, str]:
    """The tags that name this process as a run's driver, with a first heartbeat."""
    pid = os.getpid()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid),
            PROCESS_TAG: f"{namespace()}/{start_time(pid) or 0:.2f}", HEARTBEAT_TAG: f"{time.time():.0f}"}


class Heartbeat:
    """Refreshes a run's :data:`HEARTBEAT_TAG` every ``every`` seconds from a daemon thread until :meth:`stop`."""

    def __init__(self, run_id: str, every: float = HEARTBEAT_S):
        self.run_id, self.every = run_id, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"nnpipe-heartbeat-{run_id[:8]}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            try:
                client().set_tag(self.run_id, HEARTBEAT_TAG, f"{time.time():.0f}")
            except Exception as exc:  # a busy or briefly unreachable store: the next beat tries again
                log.debug("heartbeat of run %s not written: %r", self.run_id, exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
