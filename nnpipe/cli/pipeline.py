"""``nnpipe train`` and ``nnpipe schedule``: the pipeline commands (``sweep`` is in :mod:`.tune`).

Each builds a validated :class:`flows.config.PipelineConfig` (file values,
then flags on top) and runs a Prefect flow in this process. With no
``PREFECT_API_URL`` Prefect runs it against a temporary local API, so the
commands work on a fresh machine with nothing started. Bad input ends with one
line on stderr and exit code 1 (2 for usage errors), never a traceback.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import typer

from nnpipe.cli.common import (
    build_config,
    default_tracking_uri,
    fail,
    parse_hidden,
    parse_names,
    prefect_api,
    quiet_console,
    run_flow,
)
from nnpipe.cli.options import Scheduler, Target, Verbose
from nnpipe.cli.preflight import preflight
from nnpipe.cli.signals import sigterm_as_interrupt

MODE_HELP = "single (one process) | sync | local-sgd | async (Dask)."


@contextmanager
def _progress(total: int | None, label: str) -> Iterator[Any]:
    """A rich progress bar on a terminal; plain lines otherwise. Yields a ``(step, logs)`` callback."""
    from nnpipe.flows.progress import format_logs, progress_listener

    if sys.stdout.isatty():
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TextColumn("{task.fields[logs]}"), transient=False) as bar:
            tid = bar.add_task(label, total=total, logs="")

            def on_step(step: int, logs: dict[str, float]) -> None:
                bar.update(tid, completed=step + 1, logs=format_logs(logs))

            with progress_listener(on_step):
                yield on_step
    else:
        def on_step(step: int, logs: dict[str, float]) -> None:
            print(f"{label} {step + 1}{'/' + str(total) if total else ''}: {format_logs(logs)}", flush=True)

        with progress_listener(on_step):
            yield on_step


def _print_result(result: dict[str, Any]) -> None:
    from nnpipe.tracking import links

    m = result["metrics"]
    extra = result.get("extra") or {}
    uri = result["tracking_uri"]
    shown = ", ".join(f"test/{k}={v:.4f}" for k, v in sorted(m.items()))
    typer.echo(f"MLflow run:  {result['run_id']}")
    typer.echo(f"             {extra.get('run_url') or links.run_url(uri, result['experiment_id'], result['run_id'])}")
    typer.echo(f"model:       {result['model_name']} version {result['version']}  ({shown})")
    typer.echo(f"             {extra.get('version_url') or links.version_url(uri, result['model_name'], result['version'])}")
    verdict = "promoted to champion" if result["promoted"] else "not promoted"
    typer.echo(f"promotion:   {verdict}: {result['decision']}")
    if extra.get("prefect_url"):
        typer.echo(f"Prefect:     {extra['prefect_url']}")
    command = links.ui_command(uri)
    typer.echo(f"MLflow UI:   {command}  (then open the links above)" if command else f"MLflow UI:   {links.ui_base(uri)}")


def _recorded_without_server(result: dict[str, Any], why: str) -> None:
    """The run finished in MLflow but its Prefect server went away: the usual summary, a warning, exit 0.

    Exit code 0: the training, its MLflow run and the gated version are all
    there, and running the command again would train a second model; only
    Prefect's bookkeeping of this flow run is missing.
    """
    from nnpipe.cli.server_watch import PREFECT_NOT_RECORDED, exit_without_server

    _print_result(result)
    exit_without_server(f"warning: {why}; the training, MLflow run {result['run_id']} and {result['model_name']} "
                        f"version {result['version']} are recorded; {PREFECT_NOT_RECORDED}", 0)


def register(app: typer.Typer) -> None:
    """Add ``train`` and ``schedule`` to the ``nnpipe`` app."""

    @app.command()
    def train(
        dataset: Optional[str] = typer.Option(None, "--dataset", help="Built-in name (iris, wine, breast_cancer, digits, diabetes), a CSV/Parquet file (.csv.gz too), a directory of Parquet parts, a glob or an fsspec URL. Default: iris."),
        target: Target = None,
        task: Optional[str] = typer.Option(None, "--task", metavar="KIND", help="classification | regression (default: inferred; a target of whole numbers is taken as classes)."),
        features: Optional[str] = typer.Option(None, "--features", metavar="A,B,C", help="Feature columns of a file source (default: every column but the target)."),
        large: Optional[bool] = typer.Option(None, "--large/--in-memory", help="Read the dataset on the workers as a large source, or load it in memory (default: large for a directory, glob, URL or a file over 256 MB)."),
        stream: Optional[bool] = typer.Option(None, "--stream/--no-stream", help="Large sources: stream pieces every epoch, or hold shards in memory (default: by the workers' memory)."),
        stream_cache: Optional[bool] = typer.Option(None, "--stream-cache/--no-stream-cache", help="Streaming: decode each piece once and read later passes from the workers' local disk (default), or decode every pass."),
        hidden: Optional[str] = typer.Option(None, "--hidden", help="Hidden layer sizes, e.g. 64,32."),
        activation: Optional[str] = typer.Option(None, "--activation", help="relu, tanh, sigmoid, leaky_relu, identity."),
        optimizer: Optional[str] = typer.Option(None, "--optimizer", help="sgd, momentum, nesterov, adam, rmsprop."),
        lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (default: the optimizer's usual one)."),
        epochs: Optional[int] = typer.Option(None, "--epochs", help="Passes over the training data."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Rows per optimizer step."),
        mode: Optional[str] = typer.Option(None, "--mode", help=MODE_HELP),
        workers: Optional[int] = typer.Option(None, "--workers", metavar="N", help="Dask workers (distributed modes)."),
        sync_every: Optional[int] = typer.Option(None, "--sync-every", metavar="K", help="Local steps per round (local-sgd, async)."),
        overlap: Optional[int] = typer.Option(None, "--overlap", metavar="D", help="local-sgd: rounds a worker may run ahead of the merge (0: a barrier per round; 1: next round sent at once; 2: also queued while one runs)."),
        max_staleness: Optional[int] = typer.Option(None, "--max-staleness", metavar="S", help="Staleness bound (async)."),
        outer_optimizer: Optional[str] = typer.Option(None, "--outer-optimizer", help="none | sgd | nesterov: the driver's step on the averaged/merged change (local-sgd, async). Default: nesterov for local-sgd, none for async."),
        outer_lr: Optional[float] = typer.Option(None, "--outer-lr", help="Outer optimizer learning rate (default 1.0)."),
        outer_momentum: Optional[float] = typer.Option(None, "--outer-momentum", help="Outer optimizer momentum (default: sgd 0, nesterov 0.5)."),
        warmup_epochs: Optional[int] = typer.Option(None, "--warmup-epochs", metavar="N", help="Synchronous epochs before local steps (local-sgd, async; default min(2, epochs // 20))."),
        lr_scaling: Optional[str] = typer.Option(None, "--lr-scaling", help="none | linear | sqrt: scale the lr with the worker count (local-sgd, async; default linear)."),
        lr_warmup_epochs: Optional[int] = typer.Option(None, "--lr-warmup-epochs", metavar="N", help="Epochs to ramp up to the scaled lr (default 0: no ramp)."),
        until: Optional[str] = typer.Option(None, "--until", metavar="METRIC>=VALUE", help="A target to time, e.g. val/accuracy>=0.85 or val/loss<=0.3: the first epoch that reaches it is logged (target/seconds from this command's start, target/epochs) and printed."),
        stop_at_target: Optional[bool] = typer.Option(None, "--stop-at-target/--no-stop-at-target", help="With --until: stop at the first epoch that reaches it (default), or only record it and train on."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Seeds the split, initialisation and shuffling."),
        dtype: Optional[str] = typer.Option(None, "--dtype", help="float32 | float64."),
        model_name: Optional[str] = typer.Option(None, "--model-name", help="Registered model name (default nnpipe-<dataset>)."),
        scheduler: Scheduler = None,
        config: Optional[Path] = typer.Option(None, "--config", metavar="FILE", help="TOML or YAML file with any of these settings; flags override it."),
        resume_from: Optional[str] = typer.Option(None, "--resume-from", metavar="RUN_ID", help="Continue from the checkpoints an earlier MLflow run logged."),
        warm_start: Optional[str] = typer.Option(None, "--warm-start", metavar="champion", help="Start from the registered champion's weights when its network has this shape (the run's tag nnpipe.warm_start names the version)."),
        metrics_port: Optional[int] = typer.Option(None, "--metrics-port", metavar="PORT", help="Serve live training metrics for Prometheus at http://127.0.0.1:PORT/metrics while training (0: a free port, printed). Default: $NNPIPE_METRICS_PORT, else off."),
        verbose: Verbose = False,
    ) -> None:
        """Train, evaluate, register and gate one model (a Prefect flow; MLflow at ./mlflow.db by default)."""
        started = time.time()
        if task is not None and task not in ("classification", "regression"):
            raise typer.BadParameter(f"expected classification or regression, got {task!r}", param_hint="'--task'")
        overrides = {"task": task, "resume_from": resume_from, "warm_start": warm_start, "metrics_port": metrics_port, "features": parse_names(features), "large": large, "stream": stream, "stream_cache": stream_cache,
            "dataset": dataset, "target": target, "hidden": parse_hidden(hidden), "activation": activation,
            "optimizer": optimizer, "lr": lr, "epochs": epochs, "batch_size": batch_size, "mode": mode,
            "workers": workers, "sync_every": sync_every, "overlap": overlap, "max_staleness": max_staleness, "seed": seed,
            "dtype": dtype, "model_name": model_name, "scheduler_address": scheduler,
            "outer_optimizer": outer_optimizer, "outer_lr": outer_lr, "outer_momentum": outer_momentum,
            "warmup_epochs": warmup_epochs, "lr_scaling": lr_scaling, "lr_warmup_epochs": lr_warmup_epochs,
            "until": until, "stop_at_target": stop_at_target,
        }
        cfg = build_config(config, overrides)
        if cfg.resume_from:  # the earlier run's settings, under the file's and the flags'
            from nnpipe.cli.resume import restore

            cfg = restore(cfg, config, overrides, default_tracking_uri, fail, lambda line: typer.echo(line, err=True))
        preflight(cfg, default_tracking_uri, fail, note=lambda line: typer.echo(line, err=True))  # data, store, scheduler: seconds, before any start
        from nnpipe.cli.server_watch import ServerGone, gone
        from nnpipe.flows.pipeline import training_flow
        from nnpipe.flows.progress import announcements, outcome_listener
        from nnpipe.target import command_started

        kept: list[dict[str, Any]] = []  # the result as recorded in MLflow, kept should Prefect's API go
        # Every mode reports once per epoch (the distributed ones per epoch's worth of rows, whatever the rounds).
        with sigterm_as_interrupt(), prefect_api(), quiet_console(verbose), announcements(typer.echo), \
                _progress(cfg.train.epochs, "epoch"), outcome_listener(kept.append), \
                command_started(default=started):
            try:
                result = run_flow(training_flow, cfg)
            except ServerGone as exc:
                if not kept:
                    raise  # prefect_api says it: the run stopped before its model was registered
                _recorded_without_server(kept[-1], str(exc))
            if gone() is not None:  # after the flow, before Prefect's exit-time retries
                _recorded_without_server(result, gone())
        _print_result(result)

    @app.command()
    def schedule(
        deployment: list[str] = typer.Option([], "--deployment", "-d", help="Serve only these deployment names (default: all)."),
        interval: Optional[float] = typer.Option(None, "--interval", metavar="SECONDS", help="Replace every cron schedule with this interval (for trying it out)."),
        mlflow_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow tracking URI for the scheduled runs (default sqlite:///<cwd>/mlflow.db)."),
        list_only: bool = typer.Option(False, "--list", help="Print the deployments and their schedules, then exit."),
    ) -> None:
        """Serve the scheduled deployments (deploy/deployments.py) with Prefect's serve until interrupted.

        Scheduling needs a Prefect server: PREFECT_API_URL if set, else a local
        one started for as long as this command runs.
        """
        from nnpipe.deploy.deployments import DEPLOYMENTS, serve_deployments, table

        names = set(deployment)
        unknown = sorted(names - {d.name for d in DEPLOYMENTS})
        if unknown:
            fail(f"unknown deployment(s) {unknown}; known: {[d.name for d in DEPLOYMENTS]}")
        if interval is not None and interval <= 0:
            fail(f"--interval must be a positive number of seconds, got {interval!r}")
        chosen = [d for d in DEPLOYMENTS if not names or d.name in names]
        if list_only:
            for line in table(chosen, interval):
                typer.echo(line)
            return
        from nnpipe.redact import move_credentials_to_env

        # served in this process: the credentials stay in its environment, not in Prefect's parameters
        tracking_uri = move_credentials_to_env(default_tracking_uri(mlflow_uri))
        try:
            serve_deployments(chosen, interval=interval, tracking_uri=tracking_uri, echo=typer.echo)
        except KeyboardInterrupt:
            raise typer.Exit(0)
        except (RuntimeError, OSError, ValueError) as exc:
            fail(str(exc).splitlines()[0])
