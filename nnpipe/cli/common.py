"""What every ``nnpipe`` command shares: one-line errors, option parsing, quiet consoles, the Prefect API.

A command fails with ``error: ...`` on stderr and exit code 1 (2 for usage,
130 when interrupted), never a traceback; :func:`run_flow` turns any failure
of a flow into that line.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import typer


def fail(message: str, code: int = 1) -> None:
    """Print ``error: <message>`` (credentials redacted) on stderr and exit with ``code``."""
    from nnpipe.redact import redact

    typer.echo(f"error: {redact(message)}", err=True)
    raise typer.Exit(code)


def parse_hidden(value: str | None) -> list[int] | None:
    """``--hidden 64,32`` as ``[64, 32]`` (None when not given); a usage error quoting anything else."""
    if value is None:
        return None
    try:
        sizes = [int(part) for part in value.replace(" ", "").split(",") if part]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers like 64,32, got {value!r}") from None
    if not sizes:
        raise typer.BadParameter(f"expected comma-separated integers like 64,32, got {value!r}")
    return sizes


def parse_names(value: str | None) -> list[str] | None:
    """``--features a,b,c`` as ``["a", "b", "c"]`` (None when not given)."""
    if value is None:
        return None
    names = [part.strip() for part in value.split(",") if part.strip()]
    if not names:
        raise typer.BadParameter(f"expected comma-separated column names like a,b,c, got {value!r}")
    return names


@contextmanager
def quiet_console(verbose: bool) -> Iterator[None]:
    """Hide Prefect's console log lines and MLflow's INFO chatter unless ``--verbose``; restore after.

    The command prints its own progress and a one-line error; the full logs
    still reach the Prefect API and its UI. Prefect's console handler is set
    up by Prefect's own logging configuration on the "prefect" logger tree.
    """
    if verbose:
        yield
        return
    import warnings

    from prefect.logging.handlers import PrefectConsoleHandler

    import nnpipe.tracking  # noqa: F401  (imports mlflow, which configures its loggers; set levels after)

    saved: list[tuple[logging.Handler | logging.Logger, int]] = []
    mlflow_logger = logging.getLogger("mlflow")
    saved.append((mlflow_logger, mlflow_logger.level))
    mlflow_logger.setLevel(logging.WARNING)
    # MLflow logs each failed store call with its whole traceback at ERROR, then raises it; the
    # command's one line says the error (a locked SQLite store printed 1,200 lines in a tune drill).
    store_logger = logging.getLogger("mlflow.store.db.utils")
    saved.append((store_logger, store_logger.level))
    store_logger.setLevel(logging.CRITICAL)
    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):  # Prefect's config puts it on root
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, PrefectConsoleHandler):
                saved.append((handler, handler.level))
                handler.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow\..*")
            yield
    finally:
        for obj, level in saved:
            obj.setLevel(level)


# seconds Prefect may take to start its temporary server (its own default is 20)
EPHEMERAL_START_S = 120


@contextmanager
def prefect_api() -> Iterator[str | None]:
    """Point Prefect at ``PREFECT_API_URL``, else at this user's local server (started once, then reused).

    ``NNPIPE_PREFECT_SERVER=ephemeral`` keeps Prefect's own temporary server
    per command instead (slower; nothing left running).
    """
    if os.environ.get("PREFECT_API_URL"):
        from nnpipe.deploy.local_prefect import api_answers

        api = os.environ["PREFECT_API_URL"]
        # Prefect itself retries for ~25 s before it gives up on a dead API; say so at once.
        if not api_answers(api):
            fail(f"the Prefect API at PREFECT_API_URL={api} does not answer; start that server, "
                  "or unset PREFECT_API_URL to use the local one")
        with _server_gone_ends_command(api, None):
            yield api
        return
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

    if os.environ.get("NNPIPE_PREFECT_SERVER", "").lower() == "ephemeral":
        # Prefect gives its temporary server 20 s to start; on a loaded machine (a training beside
        # it) that start alone took longer, and the command failed before doing anything.
        wait = {} if "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in os.environ else {
            PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: EPHEMERAL_START_S}
        with temporary_settings(updates=wait), _server_gone_ends_command(None, None):
            yield None
        return

    from nnpipe.deploy.local_prefect import client_lease, ensure_server

    try:
        info = ensure_server(echo=lambda line: typer.echo(line, err=True))
    except (RuntimeError, OSError, ValueError) as exc:
        fail(str(exc).splitlines()[0])
    # a lease for as long as this command runs: the server's idle watch never stops it under a training
    with client_lease(), temporary_settings(updates={PREFECT_API_URL: info["api"]}), \
            _server_gone_ends_command(info["api"], info.get("pid")):
        yield info["api"]


@contextmanager
def _server_gone_ends_command(api: str | None, pid: int | None) -> Iterator[None]:
    """Watch the Prefect server for the block; if it went away, one line and exit 1 (see :mod:`.server_watch`).

    A command that can still say what it recorded (``train``) catches :class:`ServerGone` itself first.
    A command that already said why it ends (Ctrl-C, exit 130) ends at once once the server is gone,
    without Prefect's exit-time retries.
    """
    from nnpipe.cli.server_watch import PREFECT_NOT_RECORDED, ServerGone, end_now, exit_without_server, watched

    with watched(api, pid) as watch:
        try:
            yield
        except ServerGone as exc:
            exit_without_server(f"error: {exc}; the command stopped there: what it finished is in MLflow, and "
                                f"{PREFECT_NOT_RECORDED}", 1)
        except typer.Exit as exc:
            if watch.gone is not None:
                end_now(exc.exit_code)
            raise


def default_tracking_uri(config_uri: str | None) -> str:
    """Explicit URI, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``."""
    return config_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def build_config(config_file: Optional[Path], overrides: dict[str, Any]) -> Any:
    """The validated :class:`~nnpipe.flows.config.PipelineConfig`: file values, then flags; one line on error."""
    from nnpipe.flows.config import ConfigError, build_config

    try:
        return build_config(config_file, overrides)
    except ConfigError as exc:
        fail(str(exc))


INTERRUPTED = "the MLflow run is marked KILLED, nothing was registered"


def _while_interrupted(exc: BaseException) -> bool:
    """``exc`` was raised while handling a Ctrl-C or SIGTERM (one of its contexts is one)."""
    seen: BaseException | None = exc
    for _ in range(20):
        seen = seen.__context__ if seen is not None else None
        if seen is None:
            return False
        if not isinstance(seen, Exception):  # KeyboardInterrupt, Prefect's TerminationSignal, SystemExit
            return True
    return False


def run_flow(fn, *args: Any, on_interrupt: str = INTERRUPTED, **kwargs: Any) -> Any:
    """Run a flow, turning any failure into one line on stderr and exit code 1 (130 and ``on_interrupt`` for Ctrl-C)."""
    from nnpipe.cli.server_watch import ServerGone, gone
    from nnpipe.data.load import DataError

    try:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if gone() is not None and _while_interrupted(exc):  # Ctrl-C took the server down too (same group)
                raise KeyboardInterrupt() from None
            if gone() is not None:  # the dead Prefect API's error; a run's own error is said beside it
                own = "" if type(exc).__module__.startswith(("httpx", "httpcore", "prefect")) else (
                    f"; the run itself ended with {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}")
                raise ServerGone(f"{gone()}{own}") from None
            raise
    except ServerGone:
        raise
    except DataError as exc:
        fail(str(exc))
    except (ValueError, TypeError) as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    except KeyboardInterrupt as exc:
        fail(f"interrupted ({exc}); {on_interrupt}" if str(exc) else f"interrupted; {on_interrupt}", 130)
    except Exception as exc:  # a failed step: say which error, not where in the code
        first = str(exc).splitlines()[0] if str(exc) else ""
        fail(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)
