"""This user's local Prefect server: started once in the background, reused by every command.

Prefect 3 runs flows against an API. With no ``PREFECT_API_URL`` it would start
a temporary server for each command and stop it at exit, which costs ~10 s of
every ``nnpipe train`` and loses the flow-run history. Instead the first
command that needs an API starts ``prefect server start`` in its own session
(database in ``$PREFECT_HOME``), records it in
``$PREFECT_HOME/nnpipe-server/server.json`` and leaves it running; later
commands find it there and connect in milliseconds, and the Prefect UI at its
address shows every past run. ``nnpipe server stop`` stops it; unused for an
hour (``NNPIPE_PREFECT_IDLE_MINUTES``) it stops itself (:mod:`.idle_watch`).

Starting is serialised by a file lock, so commands started together on a fresh
machine share one server and one database initialisation instead of racing.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from nnpipe.deploy import idle_watch
from nnpipe.deploy.processes import free_port, pid_alive, spawn, stop, wait_http
from nnpipe.deploy.services import ui_api_env

NAME = "prefect-server"
START_TIMEOUT_S = float(os.environ.get("NNPIPE_PREFECT_START_TIMEOUT", "240"))


def prefect_home() -> Path:
    """``PREFECT_HOME`` as Prefect resolves it (default ``~/.prefect``)."""
    return Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()


def state_dir(home: Path | None = None) -> Path:
    return (home or prefect_home()) / "nnpipe-server"


@contextmanager
def _locked(state: Path) -> Iterator[None]:
    state.mkdir(parents=True, exist_ok=True)
    with open(state / "start.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _healthy(api: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api.rstrip('/')}/health", timeout=timeout) as r:
            return r.status == 200
    except (OSError, ValueError):
        return False


def api_answers(api: str, tries: int = 2, timeout: float = 3.0) -> bool:
    """True if the Prefect API at ``api`` answers its health check within a few seconds."""
    for attempt in range(tries):
        if _healthy(api, timeout):
            return True
        if attempt + 1 < tries:
            time.sleep(0.5)
    return False


def status(home: Path | None = None) -> dict | None:
    """The running server's record (``api``, ``ui``, ``pid``, ``home``), or None."""
    record = state_dir(home) / "server.json"
    try:
        info = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    if not pid_alive(int(info.get("pid", 0))) or not _healthy(info["api"]):
        return None
    return info


def ensure_server(home: Path | None = None, echo: Callable[[str], None] = print,
                  timeout: float = START_TIMEOUT_S) -> dict:
    """The record of this user's local Prefect server, starting it first if none answers.

    Parameters
    ----------
    home : Path, optional
        ``PREFECT_HOME``; the server's database and logs live under it.
    echo : callable
        Told once when a server has to be started (the first run takes a while).
    timeout : float
        Seconds to wait for a new server's health check (``NNPIPE_PREFECT_START_TIMEOUT``).
    """
    home = home or prefect_home()
    state = state_dir(home)
    limit = idle_watch.idle_seconds()
    found = status(home)
    if found:
        return found
    with _locked(state):
        found = status(home)  # another command may have started it while we waited
        if found:
            return found
        stop(state, NAME)  # a stale pid file from a server that died
        echo(f"starting a local Prefect server (first run only; logs in {state / 'logs'}) ...")
        last_error: Exception | None = None
        for _ in range(3):  # a free port can be taken before the server binds it: retry on another
            port = free_port()
            env: dict[str, str | None] = {
                "PREFECT_HOME": str(home), "PREFECT_API_URL": None, "PREFECT_UI_ENABLED": "true",
                **ui_api_env(f"http://127.0.0.1:{port}/api"),
                # scheduled deployments get their runs within seconds, not the default minute
                "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "10",
            }
            proc = spawn(state, NAME, [*_server_command(), "--host", "127.0.0.1", "--port", str(port)], env=env)
            api = f"http://127.0.0.1:{port}/api"
            try:
                wait_http(f"{api}/health", timeout, proc, state / "logs" / f"{NAME}.log")
            except RuntimeError as exc:
                last_error = exc
                stop(state, NAME)
                continue
            info = {"api": api, "ui": f"http://127.0.0.1:{port}", "pid": proc.pid, "home": str(home),
                    "started": time.time(), "idle_seconds": limit}
            (state / "server.json").write_text(json.dumps(info, indent=2))
            # beside it, the watch that stops it once unused (a server per PREFECT_HOME would otherwise pile up)
            spawn(state, idle_watch.NAME, [sys.executable, "-m", "nnpipe.deploy.idle_watch", str(state), str(proc.pid),
                                           api, str(limit), NAME])
            echo(f"Prefect server at {info['ui']} (stays up for later runs; stops itself after {limit / 60:g} min "
                 "unused; `nnpipe server stop` stops it now)")
            return info
        raise RuntimeError(f"could not start a local Prefect server: {last_error}")


def stop_server(home: Path | None = None) -> bool:
    """Stop this user's local Prefect server and its idle watch; True if the server was running."""
    state = state_dir(home)
    with _locked(state):
        (state / "server.json").unlink(missing_ok=True)
        stop(state, idle_watch.NAME)
        return stop(state, NAME)


def idle_line(info: dict, now: float | None = None) -> str:
    """When the server stops itself: ``idle for 3 min; stops itself at 21:50 UTC unless used (after 60 min idle)``."""
    import datetime as _dt

    watch = idle_watch.read(state_dir(Path(info["home"])))
    if watch is None or not pid_alive(int(_pid(state_dir(Path(info["home"])), idle_watch.NAME) or 0)):
        return "no idle watch: it stays up until `nnpipe server stop`"
    now = time.time() if now is None else now
    limit = float(watch["idle_seconds"])
    at = _dt.datetime.fromtimestamp(watch["last_active"] + limit, _dt.timezone.utc).strftime("%H:%M:%S UTC")
    idle = max(0.0, now - watch["last_active"])
    return (f"idle for {idle / 60:.0f} min; stops itself at {at} unless used "
            f"(after {limit / 60:g} min idle; {idle_watch.ENV_IDLE} sets it)")


def _pid(state: Path, name: str) -> int | None:
    try:
        return int((state / "pids" / f"{name}.pid").read_text())
    except (OSError, ValueError):
        return None


def client_lease(home: Path | None = None):
    """A context in which this process counts as a client of the local server (the idle watch waits for it)."""
    return idle_watch.lease(state_dir(home))


def _server_command() -> list[str]:
    from nnpipe.deploy.processes import BIN

    return [str(BIN / "prefect"), "server", "start"]
