"""``nnpipe serve`` and ``nnpipe drift``: the model in production, following the registry.

``serve`` starts :mod:`nnpipe.serve` (uvicorn + Starlette) for a registered
model and blocks until SIGTERM / Ctrl-C. ``drift`` shows how far live inputs
moved from the training statistics: from a running server (``--url``) or from
the metrics servers logged to MLflow.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from nnpipe.cli.common import fail
from nnpipe.cli.options import TrackingUri


def _console() -> Console:
    return Console(width=160, highlight=False)  # wide: tables stay whole in pipes and captured output


def _store(uri: str | None) -> str:
    """The tracking URI, checked (an existing SQLite file, or a server that answers); exported for the workers."""
    from nnpipe import tracking
    from nnpipe.redact import move_credentials_to_env
    from nnpipe.tracking.preflight import StoreUnavailable, check_store
    from nnpipe.tracking.store import sqlite_path

    uri = move_credentials_to_env(uri or tracking.tracking_uri())
    db = sqlite_path(uri)
    if db is not None and not db.exists():  # serving reads a registry: never create an empty store
        fail(f"no MLflow store at {db}: train and register a model there first, or point at the store with "
              f"--tracking-uri or MLFLOW_TRACKING_URI")
    try:
        check_store(uri)
    except StoreUnavailable as exc:
        fail(str(exc))  # redacted by fail
    os.environ["MLFLOW_TRACKING_URI"] = uri  # the worker processes configure from it
    tracking.configure(uri)
    return uri


def serve(
    name: str = typer.Argument(..., help="Registered model name."),
    alias: str = typer.Option("champion", "--alias", help="The alias to follow; a move is served within seconds."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(5000, "--port", help="Port to listen on (0: any free port)."),
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes (each loads the model)."),
    shadow: Optional[str] = typer.Option(None, "--shadow", metavar="ALIAS",
                                         help="Also score every request with this alias's version, off the response path."),
    poll: float = typer.Option(1.0, "--poll", metavar="SECONDS", help="How often to read the aliases."),
    max_rows: int = typer.Option(10_000, "--max-rows", help="Rows per request; more is refused with 413."),
    max_body: int = typer.Option(8 * 1024 * 1024, "--max-body", metavar="BYTES", help="Request body limit (413 above)."),
    report_every: float = typer.Option(60.0, "--report-every", metavar="SECONDS",
                                       help="How often shadow agreement and drift go to MLflow."),
    access_log: bool = typer.Option(False, "--access-log", help="Log every request."),
    tracking_uri: TrackingUri = None,
) -> None:
    """Serve model NAME over MLflow's scoring protocol, following --alias (champion) as it moves."""
    from nnpipe.serve import ServeConfig, run

    try:
        config = ServeConfig(name=name, alias=alias, shadow=shadow, poll=poll, max_rows=max_rows, max_body=max_body,
                             report_every=report_every)
    except ValueError as exc:
        fail(str(exc))
    _store(tracking_uri)
    run(config, host=host, port=port, workers=workers, access_log=access_log)


def _fetch(url: str) -> dict:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/drift", timeout=10) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        fail(f"{url}/drift answered {exc.code}: {exc.read().decode(errors='replace')[:300]}")
    except (urllib.error.URLError, OSError) as exc:
        fail(f"cannot reach the server at {url}: {getattr(exc, 'reason', exc)}")


def _from_mlflow(name: str, alias: str) -> dict:
    from nnpipe import tracking
    from nnpipe.tracking.errors import TrackingError
    from nnpipe.tracking.serving import load_verified, run_metrics, safe_key

    try:
        version = tracking.alias_version(name, alias)
        if version is None:
            fail(f"model {name!r} has no alias {alias!r}")
        loaded = load_verified(name, version)
    except (TrackingError, ValueError) as exc:
        fail(str(exc))
    live = run_metrics(loaded.run_id, "live/")
    model = loaded.model
    names = model.feature_names or [f"x{i}" for i in range(model.spec.n_inputs)]
    features = []
    for i, n in enumerate(names):
        shift = live.get(f"live/shift/{safe_key(n)}")
        scale = float(model.scale[i]) if model.scale[i] > 0 else 1.0
        features.append({"name": n, "train_mean": float(model.mean[i]), "train_scale": scale,
                         "live_mean": None if shift is None else float(model.mean[i]) + shift * scale, "shift": shift})
    out = {"model": name, "version": version, "rows": int(live.get("live/rows", 0)), "features": features,
           "source": f"MLflow metrics live/shift/* of v{version}'s run (logged by nnpipe serve)"}
    if model.class_freq is not None:  # only the distance is logged, not each class's live share
        out["prediction_shift"] = live.get("live/prediction_shift")
        out["classes"] = [{"label": c, "train_share": float(f), "live_share": None}
                          for c, f in zip(model.classes.tolist(), model.class_freq)]
    return out


def drift(
    name: str = typer.Argument(..., help="Registered model name."),
    alias: str = typer.Option("champion", "--alias", help="Whose training statistics to compare with."),
    url: Optional[str] = typer.Option(None, "--url", help="Ask this running server (e.g. http://127.0.0.1:5000) "
                                                          "instead of reading what servers logged to MLflow."),
    tracking_uri: TrackingUri = None,
) -> None:
    """Show per feature how far live inputs moved from the training statistics (standardised mean shift)."""
    from nnpipe.serve.drift import NOTABLE_SHIFT

    if url:
        report = _fetch(url)
        source = f"live, from {url}"
    else:
        _store(tracking_uri)
        report = _from_mlflow(name, alias)
        source = report["source"]
    table = Table(title=f"drift of {report['model']!r} v{report['version']}: {report['rows']} live row(s); {source}")
    for col in ("feature", "train mean", "train sd", "live mean", "shift (sd)", ""):
        table.add_column(col, justify="left" if col in ("feature", "") else "right")

    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.4g}"

    for f in report["features"]:
        flag = "" if f["shift"] is None or abs(f["shift"]) < NOTABLE_SHIFT else "[bold yellow]moved[/]"
        table.add_row(f["name"], num(f["train_mean"]), num(f["train_scale"]), num(f["live_mean"]),
                      "-" if f["shift"] is None else f"{f['shift']:+.3f}", flag)
    _console().print(table)
    if report.get("classes"):
        moved = report.get("prediction_shift")
        classes = Table(title="predicted classes against the training mix: prediction shift "
                              f"{'-' if moved is None else f'{moved:.3f}'} (total variation, 0 to 1)")
        for col in ("class", "train share", "live share"):
            classes.add_column(col, justify="left" if col == "class" else "right")
        for c in report["classes"]:
            classes.add_row(str(c["label"]), f"{c['train_share']:.3f}", num(c["live_share"]))
        _console().print(classes)
    if not report["rows"]:
        _console().print("no live rows yet: start `nnpipe serve` and send it requests "
                         "(servers log drift to MLflow every --report-every seconds)")


def register(app: typer.Typer) -> None:
    """Add ``serve`` and ``drift`` to ``app``."""
    app.command("serve")(serve)
    app.command("drift")(drift)
