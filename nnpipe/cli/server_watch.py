"""The Prefect server going away under a running command: noticed in a second, said in one line, no hang.

A command reports to a Prefect server while it runs (task events, logs, the
flow run's states, the artefact). If that server dies mid-run (killed, the
OOM killer, ``nnpipe server stop`` from another shell), the training itself
goes on, because MLflow, not Prefect, holds its results. But every later call
to the dead API retries with back-off (about a minute per call), and at exit
Prefect's event and log workers try each queued item again (~7 s apiece): the
command used to sit for minutes after registering its model, deaf to SIGTERM,
which Prefect's engine answers with yet another call to the same dead API.

:func:`watched` runs a probe thread beside the command. Once the server is
gone (its process has exited, or its port refuses connections twice in a
row; a slow answer is not "gone"), every further request of Prefect's HTTP
clients fails at once, so the flow's own ``finally`` blocks run promptly, and
the command says what was and was not recorded and exits without Prefect's
exit-time retries (:func:`exit_without_server`).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, NoReturn
from urllib.parse import urlsplit

PROBE_INTERVAL_S = 0.5
CONNECT_TIMEOUT_S = 2.0
REFUSALS = 2  # consecutive refused connects that mean "gone" (a restart in between would answer)


class ServerGone(Exception):
    """The Prefect server went away while the command ran; the message says which and how it was noticed."""


class ServerWatch:
    """Probes the Prefect API at ``api`` (and its process ``pid``, when this machine runs it) until stopped."""

    def __init__(self, api: str | None, pid: int | None = None, interval: float = PROBE_INTERVAL_S):
        self.interval = interval
        self._given = (api, pid) if api else None
        self._aim(api, pid)
        self._armed = False  # only a server seen answering can go away (a starting one refuses too)
        self.gone: str | None = None  # why, once noticed
        self.gone_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nnpipe-prefect-watch", daemon=True)

    def start(self) -> ServerWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _aim(self, api: str | None, pid: int | None) -> None:
        self.api, self.pid = api, pid
        parts = urlsplit(api or "")
        self._address = (parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not self._armed:
                # Prefect's temporary server is found once Prefect starts it (on another port if the
                # first was taken); any server is watched from its first accepted connection on.
                found = self._given or _temporary_server()
                if found is not None:
                    self._aim(*found)
                    self._armed = not _refused(self._address)
                continue
            if self.check(REFUSALS):
                return

    def check(self, refusals: int = 1) -> bool:
        """Probe now; True (and :attr:`gone` set) if the server is gone."""
        if not self._armed:
            return False
        if self.gone is None and self.pid is not None and not _process_alive(self.pid):
            self._mark(f"its process (pid {self.pid}) has exited")
        if self.gone is None:
            for attempt in range(refusals):
                if not _refused(self._address):
                    return False
                if attempt + 1 < refusals:
                    time.sleep(self.interval)
            self._mark(f"{self._address[0]}:{self._address[1]} refuses connections")
        return True

    def _mark(self, why: str) -> None:
        self.gone_at = time.time()
        self.gone = f"the Prefect server at {self.api} went away during the run ({why})"


class _QuietWhenGone(logging.Filter):
    """Drop Prefect's per-event ERROR (the whole event, a screenful apiece) once the server is known gone.

    An event can fail before the probe thread's next look, so a failure is
    itself a reason to look now; the command's own line says it, once.
    """

    def __init__(self, watch: ServerWatch):
        super().__init__()
        self.watch = watch

    def filter(self, record: logging.LogRecord) -> bool:
        if "failed to process item" not in str(record.msg) and "failed to process item" not in record.getMessage():
            return True
        return not self.watch.check()


def _temporary_servers() -> list[tuple[Any, Any]]:
    """``(server, its process)`` for each temporary server Prefect started in this process (``ephemeral``).

    Prefect keeps them on a class attribute that is not public API; if that
    moves, none is found: the temporary server is then neither watched nor
    stopped early (Prefect's exit hook still stops it).
    """
    try:
        from prefect.server.api.server import SubprocessASGIServer
    except ImportError:  # pragma: no cover
        return []
    servers = list(getattr(SubprocessASGIServer, "_instances", {}).values())
    return [(s, s.server_process) for s in servers if getattr(s, "server_process", None) is not None]


def _temporary_server() -> tuple[str, int] | None:
    """The API and pid of the temporary server Prefect started in this process, once it has."""
    for server, process in _temporary_servers():
        if getattr(server, "running", True):
            return server.api_url, process.pid
    return None


def _refused(address: tuple[str, int]) -> bool:
    """True only when nothing listens (refused); a timeout is a slow server, not a gone one."""
    try:
        with socket.create_connection(address, timeout=CONNECT_TIMEOUT_S):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def _process_alive(pid: int) -> bool:
    """The process exists and is not a zombie (a server this command started and that died stays one)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


_CURRENT: list[ServerWatch] = []


def current() -> ServerWatch | None:
    """The watch of the command running in this process, if any."""
    return _CURRENT[-1] if _CURRENT else None


def gone() -> str | None:
    """Why the watched Prefect server is gone, or None while it is there (or nothing is watched)."""
    watch = current()
    return None if watch is None else watch.gone


@contextmanager
def watched(api: str | None, pid: int | None = None) -> Iterator[ServerWatch]:
    """Watch the Prefect API at ``api`` for the block; once it is gone, Prefect's HTTP requests fail at once.

    ``api=None``: the temporary server Prefect starts on first use (``NNPIPE_PREFECT_SERVER=ephemeral``).
    """
    watch = ServerWatch(api, pid).start()
    _CURRENT.append(watch)
    restore = _fail_fast_when_gone(watch)
    quiet, prefect_internal = _QuietWhenGone(watch), logging.getLogger("prefect._internal.concurrency")
    prefect_internal.addFilter(quiet)
    try:
        yield watch
    finally:
        prefect_internal.removeFilter(quiet)
        restore()
        watch.stop()
        _CURRENT.remove(watch)


def _fail_fast_when_gone(watch: ServerWatch) -> Callable[[], None]:
    """Make Prefect's sync and async HTTP clients raise ``httpx.ConnectError`` at once once ``watch`` says gone.

    Prefect reads its retry count from settings captured per context, which a
    probe thread cannot change for the main thread; wrapping the clients'
    public ``send`` is the one place every API request passes. Returns the
    function that puts the originals back. If Prefect's client module moves,
    nothing is wrapped and only the exit-time shortcut remains.
    """
    import httpx

    try:
        from prefect.client.base import PrefectHttpxAsyncClient, PrefectHttpxSyncClient
    except ImportError:  # pragma: no cover - a Prefect without these names: no shortcut, no crash
        return lambda: None
    sync_send, async_send = PrefectHttpxSyncClient.send, PrefectHttpxAsyncClient.send

    def refuse(request: Any) -> NoReturn:
        raise httpx.ConnectError(watch.gone or "the Prefect server went away", request=request)

    def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        if watch.gone:
            refuse(request)
        return sync_send(self, request, *args, **kwargs)

    async def asend(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        if watch.gone:
            if request.method == "POST" and request.url.path.endswith("/logs/"):
                # the log worker would print "--- Error logging to API ---" per batch: drop them quietly
                return httpx.Response(201, request=request)
            refuse(request)
        return await async_send(self, request, *args, **kwargs)

    PrefectHttpxSyncClient.send, PrefectHttpxAsyncClient.send = send, asend  # type: ignore[method-assign]

    def restore() -> None:
        PrefectHttpxSyncClient.send, PrefectHttpxAsyncClient.send = sync_send, async_send  # type: ignore[method-assign]

    return restore


def stop_temporary_servers() -> None:
    """Stop Prefect's temporary server of this process, if one still runs (Prefect's exit hook would, but
    :func:`end_now` skips exit hooks); a server that went away on another port may have been replaced."""
    for _, process in _temporary_servers():
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except Exception:
                process.kill()


def end_now(code: int) -> NoReturn:
    """Flush, stop a temporary server, and end the process without Prefect's exit-time retries."""
    sys.stdout.flush()
    sys.stderr.flush()
    stop_temporary_servers()
    os._exit(code)


def exit_without_server(line: str, code: int) -> NoReturn:
    """Print ``line`` on stderr and end the process now, skipping Prefect's exit-time retries of a dead API.

    Only called once the flow has ended: the MLflow run is closed, the cluster
    and the metrics endpoint are shut, so what is skipped is Prefect's
    queue of events and logs for a server that is no longer there.
    """
    from nnpipe.redact import redact

    print(redact(line), file=sys.stderr)
    end_now(code)


PREFECT_NOT_RECORDED = ("the Prefect flow run stays Running in that server's database, without its last task "
                        "states, logs and artefact; `nnpipe server start` starts a local server again")
