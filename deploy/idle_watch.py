"""The local Prefect server's idle watch: it stops the server after a while with nothing using it.

A server nnpipe starts in the background would otherwise stay up for good
(about 245 MB and 2-3% of a core while idle, one per ``PREFECT_HOME``). This
small process, started beside it, looks every few seconds for a use:

- a client: an nnpipe command holding a lease (a file named after its pid
  under ``nnpipe-server/clients/``, removed when the command ends; a lease
  whose process died does not count);
- a flow run in a running or pending state (a Python session of the user's
  own, a served deployment's run);
- a deployment being served (``nnpipe schedule``): Prefect marks it READY
  while its process polls.

After ``NNPIPE_PREFECT_IDLE_MINUTES`` (default 60) without any, it stops
the server (its database and history stay) and exits; the next command
starts a new one. ``nnpipe server status`` shows when that will be.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

DEFAULT_IDLE_MINUTES = 60.0
ENV_IDLE = "NNPIPE_PREFECT_IDLE_MINUTES"
NAME = "idle-watch"


def idle_seconds() -> float:
    """The idle time after which the server stops, from ``NNPIPE_PREFECT_IDLE_MINUTES``."""
    raw = os.environ.get(ENV_IDLE, "")
    try:
        minutes = float(raw) if raw else DEFAULT_IDLE_MINUTES
    except ValueError:
        raise ValueError(f"{ENV_IDLE} must be a number of minutes, got {raw!r}") from None
    if not minutes > 0:
        raise ValueError(f"{ENV_IDLE} must be a positive number of minutes, got {raw!r}")
    return minutes * 60


@contextmanager
def lease(state: Path) -> Iterator[None]:
    """Within the block this process counts as a client of the server in ``state``."""
    clients = state / "clients"
    clients.mkdir(parents=True, exist_ok=True)
    mine = clients / str(os.getpid())
    mine.touch()
    try:
        yield
    finally:
        mine.unlink(missing_ok=True)


def live_clients(state: Path) -> int:
    """Leases held by live processes (a dead one's lease is removed)."""
    from nnpipe.deploy.processes import pid_alive

    n = 0
    for f in (state / "clients").glob("*") if (state / "clients").is_dir() else []:
        if f.name.isdigit() and pid_alive(int(f.name)):
            n += 1
        else:
            f.unlink(missing_ok=True)
    return n


def _count(api: str, path: str, body: dict) -> int:
    request = urllib.request.Request(f"{api.rstrip('/')}/{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        return int(json.loads(r.read()))


def busy(api: str) -> bool:
    """Whether the API has a flow run under way or a deployment being served."""
    try:
        runs = _count(api, "flow_runs/count", {"flow_runs": {"state": {"type": {"any_": ["RUNNING", "PENDING"]}}}})
        served = _count(api, "deployments/count", {"deployments": {"status": {"any_": ["READY"]}}}) \
            if runs == 0 else 0
    except (OSError, ValueError):
        return False  # an API that does not answer is not in use
    return runs + served > 0


def read(state: Path) -> dict | None:
    """The watch's last record: ``last_active`` (epoch seconds) and ``idle_seconds``; None if there is none."""
    try:
        return json.loads((state / "idle.json").read_text())
    except (OSError, ValueError):
        return None


def watch(state: Path, pid: int, api: str, limit: float, server: str, every: float | None = None) -> None:
    """Until the server ``pid`` (started as ``server`` in ``state``) ends: note each use; stop it after ``limit`` s without one."""
    from nnpipe.deploy.processes import pid_alive, stop

    every = every or max(1.0, min(30.0, limit / 6))
    last = time.time()
    while pid_alive(pid):
        if live_clients(state) or busy(api):
            last = time.time()
        (state / "idle.json").write_text(json.dumps({"last_active": last, "idle_seconds": limit, "pid": pid}))
        if time.time() - last >= limit:
            (state / "server.json").unlink(missing_ok=True)  # no command finds it from now on
            stop(state, server)
            (state / "idle.json").unlink(missing_ok=True)
            print(f"stopped the Prefect server (pid {pid}) after {limit / 60:g} min without use", flush=True)
            return
        time.sleep(every)


if __name__ == "__main__":  # python -m nnpipe.deploy.idle_watch STATE PID API SECONDS SERVER_NAME
    watch(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), sys.argv[5])
