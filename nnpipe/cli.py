"""The ``nnpipe`` command: a thin Typer front; every command is a call below it.

Command groups live beside this file and register themselves on ``app``:
``cli_pipeline`` (train, sweep, schedule) and ``cli_models`` (models,
promote, rollback, history).
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="nnpipe",
    help="Distributed NumPy neural-network training: Dask for training, Prefect for pipelines, MLflow for runs and models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    from nnpipe import cli_models, cli_pipeline

    cli_pipeline.register(app)
    cli_models.register(app)


_register()


def main() -> None:
    """Entry point of the ``nnpipe`` console script."""
    app()


if __name__ == "__main__":
    main()
