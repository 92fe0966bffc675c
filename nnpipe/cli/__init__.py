"""The ``nnpipe`` command: a thin Typer front; every command is a call below it.

Command groups live beside this file and register themselves on ``app``:
:mod:`.pipeline` (train, schedule), :mod:`.tune` (tune, sweep) and
:mod:`.models` (models, promote, rollback, history), :mod:`.server` and :mod:`.serve`. Beside them:
:mod:`.common` (one-line errors, the Prefect API), :mod:`.options`, :mod:`.preflight` (checks before
anything starts), :mod:`.resume`, :mod:`.signals` (SIGTERM that always ends the command) and
:mod:`.server_watch` (a Prefect server lost mid-run). The CLI is the top layer: it imports the flows,
the deployments and the tracking layer, and nothing imports it.
"""

from __future__ import annotations

import os

import typer

app = typer.Typer(
    name="nnpipe",
    help="Distributed NumPy neural-network training: Dask for training, Prefect for pipelines, MLflow for runs and models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    from nnpipe.cli import models, pipeline, serve, server, tune

    pipeline.register(app)
    tune.register(app)
    models.register(app)
    server.register(app)
    serve.register(app)


_register()


def _one_line(message, category, filename, lineno, line=None) -> str:
    """``warning: <message>``: what a command-line user needs, without Python's file, line and source."""
    return f"warning: {message}\n"


def one_line_warnings() -> None:
    """Print every warning of this process as one ``warning: ...`` line (set by :func:`main`, not on import)."""
    import warnings

    warnings.formatwarning = _one_line


def main() -> None:
    """Entry point of the ``nnpipe`` console script."""
    # Telemetry off for this process and the servers it starts, set here (not on
    # import) so that importing nnpipe.cli changes nothing for a library user.
    # MLflow's per-download progress bars are off too: the integrity checks and the gate
    # download model files, and six bars would bury the command's own output.
    for key, value in (("PREFECT_SERVER_ANALYTICS_ENABLED", "false"), ("DO_NOT_TRACK", "1"),
                       ("MLFLOW_ENABLE_TELEMETRY", "false"), ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")):
        os.environ.setdefault(key, value)
    one_line_warnings()  # e.g. the small-batch warning printed as a raw UserWarning with its source line
    from nnpipe.target import command_started, process_start

    with command_started(process_start()):  # --until's seconds count from the moment the user pressed enter
        app()


if __name__ == "__main__":
    main()
