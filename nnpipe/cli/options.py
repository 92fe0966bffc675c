"""Options several commands share, declared once (Typer's ``Annotated`` form): the same flag, the same help.

A command writes ``verbose: Verbose = False``; the default stays in the
signature, as Typer documents for ``Annotated`` options.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

URI_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///<cwd>/mlflow.db)."

Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Also show Prefect's log lines.")]
TrackingUri = Annotated[Optional[str], typer.Option("--tracking-uri", help=URI_HELP)]
Target = Annotated[Optional[str], typer.Option("--target", metavar="COLUMN", help="Target column of a CSV/Parquet file.")]
Scheduler = Annotated[Optional[str], typer.Option(
    "--scheduler", metavar="ADDRESS",
    help="Dask scheduler address (default: $DASK_SCHEDULER_ADDRESS, else a local cluster for this run).")]

# nnpipe tune and nnpipe sweep: trials on a cluster, on data held in memory.
TrialDataset = Annotated[Optional[str], typer.Option("--dataset", help="Built-in name or CSV/Parquet path. Default: iris.")]
TrialWorkers = Annotated[Optional[int], typer.Option("--workers", metavar="N", help="Size of the local Dask cluster.")]
BestModelName = Annotated[Optional[str], typer.Option("--model-name", help="Registered model name for the best trial.")]
Parallel = Annotated[Optional[int], typer.Option(
    "--parallel", metavar="K", help="Trials at once on the cluster (default: its number of workers).")]
Study = Annotated[Optional[str], typer.Option("--study", metavar="NAME", help="Study name; an existing study is resumed.")]
