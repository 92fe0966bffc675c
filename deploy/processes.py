"""Processes of a stack: free ports, start in a session with a pid file and a log, wait until they answer, stop.

Shared by the local stack, the production stack and the user's local Prefect
server, so that ``down`` stops exactly what ``up`` started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
QUIET_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "MLFLOW_ENABLE_TELEMETRY": "false"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Poll ``url`` until it answers 200; fail early (quoting the log's tail) if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{url}: process exited with code {proc.returncode} before it answered\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout:g} s" + (f"; see {log}" if log else ""))


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"port {port}: process exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")


def spawn(state: Path, name: str, args: list[str], env: dict[str, str | None] | None = None, cwd: Path | None = None,
          user: str | None = None) -> subprocess.Popen:
    """Start ``args`` in a new session, logging to ``<state>/logs/<name>.log``, pid in ``<state>/pids/<name>.pid``.

    ``user``: run as this OS user (the caller must be root), as PostgreSQL needs.
    """
    (state / "logs").mkdir(parents=True, exist_ok=True)
    (state / "pids").mkdir(parents=True, exist_ok=True)
    log = open(state / "logs" / f"{name}.log", "ab")
    full = {**os.environ, **QUIET_ENV, **(env or {})}
    full = {k: v for k, v in full.items() if v is not None}  # None: unset for the child
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=full,
                            cwd=str(cwd or state), start_new_session=True, user=user, group=user)
    (state / "pids" / f"{name}.pid").write_text(str(proc.pid))
    return proc


def supervised(args: list[str]) -> list[str]:
    """``args`` run under :mod:`nnpipe.deploy.supervise`: started again whenever it dies before ``stop``."""
    return [sys.executable, "-m", "nnpipe.deploy.supervise", "--", *args]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _descendants_outside(pgid: int) -> list[int]:
    """Descendants of ``pgid`` in another process group (signalling the group would miss them)."""
    import psutil

    try:
        children = psutil.Process(pgid).children(recursive=True)
    except psutil.Error:
        return []
    out = []
    for child in children:
        try:
            if os.getpgid(child.pid) != pgid:
                out.append(child.pid)
        except ProcessLookupError:
            pass
    return out


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def group_alive(pgid: int) -> bool:
    """True while any process of the session ``spawn`` started is left (a worker's flow runs too).

    Reaps the leader first when it is this process's child: a zombie would
    otherwise count as alive until the timeout.
    """
    try:
        os.waitpid(pgid, os.WNOHANG)
    except ChildProcessError:  # not our child (started by an earlier `up`)
        pass
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def stop(state: Path, name: str, timeout: float = 20, sig: int = signal.SIGTERM) -> bool:
    """Stop the process group started as ``name`` (``sig``, then SIGKILL); True if it was running."""
    pid_file = state / "pids" / f"{name}.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text())
    running = pid_alive(pid)
    if running:
        # Children that left the session (a Prefect worker starts each flow run in a session of its own)
        # are found now, while their parent still names them, and stopped with it.
        strays = _descendants_outside(pid)
        try:
            os.killpg(pid, sig)  # the session we created: the process and its children
        except ProcessLookupError:
            pass
        for child in strays:
            _signal(child, sig)
        deadline = time.monotonic() + timeout
        while (group_alive(pid) or any(pid_alive(c) for c in strays)) and time.monotonic() < deadline:
            time.sleep(0.2)
        for child in strays:
            _signal(child, signal.SIGKILL)
        if group_alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    pid_file.unlink(missing_ok=True)
    return running
