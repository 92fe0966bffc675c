"""``nnpipe models | promote | rollback | history | watch``: the model registry from the command line.

Each command is a call into :mod:`nnpipe.tracking`; errors print one clear
line to stderr and exit with status 1 (2 for usage errors, from Typer).
The store is ``--tracking-uri`` if given, else ``MLFLOW_TRACKING_URI``, else
``sqlite:///<cwd>/mlflow.db``.
"""

from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from nnpipe.cli.options import TrackingUri

# shadow/* and live/*: what `nnpipe serve` logged about a version on live traffic (docs/serving.md)
SHOWN_METRICS = ("test/accuracy", "test/loss", "test/r2", "test/mse", "val/accuracy", "val/loss",
                 "shadow/agreement", "shadow/mean_abs_diff", "live/shift_max")


def _console(stderr: bool = False) -> Console:
    # wide enough that tables are not squeezed when output is captured (tests, pipes)
    return Console(stderr=stderr, width=160, highlight=False)


def _fail(message: str) -> None:
    _console(stderr=True).print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    raise typer.Exit(code=1)


def _setup(uri: str | None):
    """Configure the store and return the tracking module (imported lazily: mlflow is slow to import)."""
    from nnpipe import tracking
    from nnpipe.redact import move_credentials_to_env, redact
    from nnpipe.tracking.preflight import StoreUnavailable, check_store
    from nnpipe.tracking.store import sqlite_path

    uri = move_credentials_to_env(uri or tracking.tracking_uri())
    db = sqlite_path(uri)
    if db is not None and not db.exists():  # these commands read a registry: never create an empty store
        _fail(f"no MLflow store at {db}: run `nnpipe train` here first, or point at the store with "
              f"--tracking-uri or MLFLOW_TRACKING_URI")
    try:  # seconds, not MLflow's minutes of retries, when the server is down or refuses us
        check_store(uri)
    except StoreUnavailable as exc:
        _fail(redact(str(exc)))
    tracking.configure(uri)
    end_orphans(tracking)
    from nnpipe.tracking.pages import describe_found, sweep_at_start

    # every model's pages, not only the one asked about: a move in the UI is recorded at the next command
    for line in describe_found(sweep_at_start(uri, warn=lambda m: _console(stderr=True).print(f"warning: {m}"))):
        _console(stderr=True).print(f"[bold yellow]note:[/] {line}", markup=True, soft_wrap=True)
    return tracking


def end_orphans(tracking) -> None:
    """End runs a driver killed outright left RUNNING (FAILED, with why), saying so on stderr.

    Their Prefect flow runs are ended Crashed by the next flow (train, tune or a schedule), which has Prefect at hand.
    """
    try:
        orphans = tracking.end_orphaned_runs()
    except Exception as exc:  # cleaning up must never stop the command the user asked for
        typer.echo(f"note: could not check for orphaned runs: {type(exc).__name__}: {exc}", err=True)
        return
    for o in orphans:
        typer.echo(f"note: run {o.run_name} ({o.run_id}) was still RUNNING; ended it FAILED: {o.reason}", err=True)


def _run(action):
    """Run ``action``; turn tracking errors into ``error: ...`` and exit 1."""
    from nnpipe.tracking.errors import TrackingError

    try:
        return action()
    except (TrackingError, ValueError) as exc:
        _fail(str(exc))


def _report_outside(tracking, name: str) -> None:
    """Record and report alias moves made outside nnpipe (MLflow UI, another client) since the last one it saw."""
    from nnpipe.tracking.promotion import describe_outside

    for line in describe_outside(_run(lambda: tracking.sync_aliases(name))):
        _console(stderr=True).print(f"[bold yellow]note:[/] moved outside nnpipe: {line}; recorded in the history",
                                    markup=True, soft_wrap=True)


def _links(tracking, name: str, version: int | None = None) -> None:
    from nnpipe.tracking import links
    from nnpipe.tracking.store import current_uri

    uri = current_uri()
    target = links.version_url(uri, name, version) if version is not None else links.model_url(uri, name)
    line = f"MLflow:      {target}"
    command = links.ui_command(uri)
    if command:
        line += f"  (serve it with: {command})"
    _console().print(line, soft_wrap=True)


def _num(value: str | None) -> str:
    if value is None:
        return ""
    try:
        return f"{float(value):.4f}"
    except (TypeError, ValueError):
        return str(value)


def models(
    name: Optional[str] = typer.Argument(None, help="Registered model name (omit it to list every model)."),
    tracking_uri: TrackingUri = None,
) -> None:
    """List the versions of model NAME with their metrics, aliases and status; without NAME, every model."""
    tracking = _setup(tracking_uri)
    if name is None:
        _all_models(tracking)
        return
    _report_outside(tracking, name)
    rows = _run(lambda: tracking.list_versions(name))
    present = [m for m in SHOWN_METRICS if any(m in r["metrics"] for r in rows)]
    table = Table(title=f"model {name!r}: {len(rows)} version(s)")
    for col in ("version", "aliases", "status", "run status", *present, "gate", "champion", "created", "run id"):
        table.add_column(col, justify="right" if col in ("version", *present) else "left")
    for r in rows:
        aliases = ", ".join(r["aliases"])
        table.add_row(
            str(r["version"]),
            f"[bold green]{aliases}[/]" if "champion" in r["aliases"] else aliases,
            r["status"] or "",
            r["run_status"] or "",
            *(_num(r["metrics"].get(m)) for m in present),
            r["gate"].get("decision", ""),
            r.get("champion", ""),
            r["created"] or "",
            r["run_id"] or "",
        )
    _console().print(table)
    _links(tracking, name)


def _all_models(tracking) -> None:
    rows = _run(tracking.list_models)
    if not rows:
        _console().print("no registered models in this store yet: `nnpipe train` registers one")
        return
    table = Table(title=f"{len(rows)} registered model(s)")
    for col in ("name", "versions", "champion", "candidate", "gate metric", "updated"):
        table.add_column(col, justify="right" if col in ("versions", "champion", "candidate") else "left")
    for r in rows:
        table.add_row(r["name"], str(r["versions"]), *("" if v is None else f"v{v}" for v in (r["champion"], r["candidate"])),
                      r["metric"], r["updated"] or "")
    _console().print(table)
    _console().print("versions of one model: nnpipe models NAME")


def promote(
    name: str = typer.Argument(..., help="Registered model name."),
    version: str = typer.Argument(..., help="Version to make champion."),
    reason: Optional[str] = typer.Option(None, "--reason", help="Why (kept in the history)."),
    check: bool = typer.Option(True, "--check/--no-check", help="First load VERSION and predict on its input example."),
    force: bool = typer.Option(False, "--force", help="Promote even though the promotion gate rejected VERSION."),
    tracking_uri: TrackingUri = None,
) -> None:
    """Make VERSION of model NAME the champion (no gate: a human decision; --force over a gate rejection)."""
    tracking = _setup(tracking_uri)
    number = _run(lambda: tracking.registry.version_number(version))
    _report_outside(tracking, name)
    decision, gate_reason = _run(lambda: tracking.promotion.gate_verdict(tracking.get_version(name, number)))
    previous = _run(lambda: tracking.promote(name, number, reason=reason, check=check, force=force))
    if previous == number:
        _console().print(f"{name}: v{number} is already the champion; nothing changed")
    else:
        was = "none" if previous is None else f"v{previous}"
        _console().print(f"{name}: champion {was} -> v{number}", soft_wrap=True)
        if decision == "rejected":
            _console().print(f"forced over the promotion gate, which said when v{number} was registered: {gate_reason}",
                             soft_wrap=True)
    _links(tracking, name, number)


def rollback(
    name: str = typer.Argument(..., help="Registered model name."),
    to: Optional[str] = typer.Option(None, "--to", help="Version to roll back to (default: the previous champion)."),
    reason: Optional[str] = typer.Option(None, "--reason", help="Why (kept in the history)."),
    tracking_uri: TrackingUri = None,
) -> None:
    """Move the champion of NAME back (to the previous champion, or --to VERSION) after a test prediction."""
    tracking = _setup(tracking_uri)
    _report_outside(tracking, name)
    before = _run(lambda: tracking.alias_version(name, tracking.CHAMPION))
    target = _run(lambda: tracking.rollback(name, to=to, reason=reason))
    was = "none" if before is None else f"v{before}"
    _console().print(f"{name}: champion {was} -> v{target} (rolled back; v{target} loaded and predicted on its input example)")
    _links(tracking, name, target)


def history(
    name: str = typer.Argument(..., help="Registered model name."),
    tracking_uri: TrackingUri = None,
) -> None:
    """Show who moved which alias of NAME, when, from which version to which, and why."""
    tracking = _setup(tracking_uri)
    _report_outside(tracking, name)
    events = _run(lambda: tracking.alias_history(name))
    metrics = sorted({e["metric"] for e in events if e.get("metric")})
    table = Table(title=f"alias history of {name!r}: {len(events)} move(s)"
                  + (f"; scores: {', '.join(metrics)}" if metrics else ""))
    for col in ("#", "time (UTC)", "alias", "move", "action", "actor", "scores", "reason"):
        table.add_column(col, overflow="fold")

    def v(x) -> str:
        return "none" if x is None else f"v{x}"

    for e in events:
        scores = ""
        if e.get("metric"):
            scores = f"{_num(e.get('from_score')) or '-'} -> {_num(e.get('to_score')) or '-'}"
        table.add_row(
            str(e.get("seq", "")), str(e.get("time", ""))[:19].replace("T", " "), str(e.get("alias", "")),
            f"{v(e.get('from'))} -> {v(e.get('to'))}", str(e.get("action", "")), str(e.get("actor", "")),
            scores, str(e.get("reason", "")),
        )
    _console().print(table)
    _links(tracking, name)


def watch(
    interval: float = typer.Option(2.0, "--interval", min=0.2, help="Seconds between two looks at the aliases."),
    tracking_uri: TrackingUri = None,
) -> None:
    """Keep every model's registry pages in step with its aliases until Ctrl-C: a move made in the MLflow UI is recorded and the descriptions rewritten within INTERVAL seconds."""
    import threading

    from nnpipe.tracking.pages import describe_found
    from nnpipe.tracking.pages import watch as watch_pages

    _setup(tracking_uri)  # its sweep already ran once
    out = _console()
    out.print(f"watching the aliases every {interval:g} s (Ctrl-C to stop)")

    def report(found) -> None:
        for line in describe_found(found):
            out.print(f"note: {line}", soft_wrap=True)

    try:
        watch_pages(threading.Event(), interval, on_moves=report)
    except KeyboardInterrupt:
        out.print("stopped")


def register(app: typer.Typer) -> None:
    """Add ``models``, ``promote``, ``rollback``, ``history`` and ``watch`` to ``app``."""
    app.command("models")(models)
    app.command("promote")(promote)
    app.command("rollback")(rollback)
    app.command("history")(history)
    app.command("watch")(watch)
