"""Prefect tasks for a large source: the rows stay on the workers (or stream through ``single``).

The same pipeline steps as :mod:`nnpipe.flows.tasks`, for a location
:func:`nnpipe.sources.is_large` accepts: describe it from metadata, validate
and split it where it is read, evaluate the test rows there, then log and
register the model with a confusion matrix from counts and an input example
of a few rows. Only small things (statistics, counts, the model) come back.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from nnpipe.config import TrainConfig
from nnpipe.flows.config import PipelineConfig
from nnpipe.model import Model
from nnpipe.results import FitResult
from nnpipe.sources.location import Source, open_source, sample_rows
from nnpipe.sources.prep import TEST, PreparedSource, prepare


@task(name="open-source", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def describe(config: PipelineConfig) -> Source:
    """List the files and read their metadata (Parquet footers, CSV headers): no rows."""
    source = open_source(config.dataset, config.target or "", config.features,
                         block_bytes=int(config.block_mb * (1 << 20)))
    get_run_logger().info("source %s: %s", config.dataset, source.describe())
    return source


@task(name="validate-and-split", cache_policy=NO_CACHE)
def validate_and_split(source: Source, config: PipelineConfig, address: str | None) -> PreparedSource:
    """Validate every piece, split by row hash and reduce the scaler statistics, where the pieces are read."""
    from nnpipe.distributed.frames import runner_for

    with runner_for(config.train.mode, address) as run:
        prepared = prepare(source, run, seed=config.train.seed, test_size=config.test_size,
                           val_size=config.val_size, task=config.task)
    get_run_logger().info("validated %s: %d rows, task %s; train %d, val %d, test %d rows", source.location,
                          prepared.n_rows, prepared.task, *(prepared.rows(c) for c in range(3)))
    return prepared


@task(name="describe-run", cache_policy=NO_CACHE)
def describe_run(run_id: str, config: PipelineConfig, prepared: PreparedSource) -> None:
    """Put the gate's metric, resolved for the source's task, on the MLflow run."""
    from nnpipe import tracking

    tracking.log_params(run_id, config.promotion_params(prepared.task))


@task(name="evaluate-source", cache_policy=NO_CACHE)
def evaluate(model: Model, prepared: PreparedSource, mode: str, address: str | None
             ) -> tuple[dict[str, float], np.ndarray | None]:
    """Test metrics and confusion counts of the servable model, as sums over the test rows where they are."""
    from nnpipe.distributed.frames import runner_for
    from nnpipe.sources.evaluate import evaluate as evaluate_source

    with runner_for(mode, address) as run:
        metrics, confusion = evaluate_source(prepared, model.spec, model.theta, TEST, run, raw_units=True)
    get_run_logger().info("test: %s", {k: round(v, 4) for k, v in metrics.items()})
    return metrics, confusion


@task(name="log-and-register", cache_policy=NO_CACHE)
def log_and_register(run_id: str, model: Model, result: FitResult, config: TrainConfig, prepared: PreparedSource,
                     metrics: dict[str, float], confusion: np.ndarray | None, model_name: str,
                     tags: dict[str, str]) -> tuple[str, str]:
    """Log the data path, test metrics, curves, the confusion matrix and the pyfunc model, then register it."""
    from nnpipe import tracking

    tracking.set_run_tags(run_id, training_tags(result))
    get_run_logger().info("trained on %s shards; %s", result.info.get("data_path"), training_tags(result))
    tracking.log_final_metrics(run_id, metrics, prefix="test/")
    labels = None if prepared.classes is None else list(prepared.classes)
    tracking.log_training_artifacts(run_id, result.history, config.to_dict(), classes=labels,
                                    confusion=None if confusion is None else (confusion, labels))
    # The schema and a few rows of one piece; float64 so that clients may send any float width.
    example = sample_rows(prepared.source)[prepared.source.features].astype("float64")
    model_uri = tracking.log_model(run_id, model, example)
    version = tracking.register_model(model_uri, model_name, run_id, tracking.version_tags(tags))
    get_run_logger().info("registered %s version %s from %s", model_name, version, model_uri)
    return model_uri, str(version)


def lineage_extra(prepared: PreparedSource) -> dict[str, Any]:
    """Run tags describing the source: location, format, files, bytes, rows, fingerprint."""
    s = prepared.source
    out = {"dataset.location": s.location, "dataset.format": s.fmt, "dataset.files": len(s.files),
           "dataset.bytes": s.n_bytes, "dataset.rows": prepared.n_rows, "dataset.fingerprint": s.fingerprint}
    return out


def training_tags(result: FitResult) -> dict[str, Any]:
    """Which data path training took, its BLAS threads (single) and, when chosen automatically, the round size."""
    info = result.info
    out = {"nnpipe.data_path": info.get("data_path")}
    if "stream_decoded" in info:  # streamed with the decoded-piece cache: proof later passes did not decode
        out["nnpipe.stream_cache"] = (f"{info['stream_decoded']} piece(s) decoded, "
                                      f"{info['stream_cache_reads']} read from the local cache")
    if "blas_threads" in info:  # single mode: what nnpipe.blas decided for the training steps
        out["nnpipe.blas_threads"] = info["blas_threads"]
    if "round/rtt_s" in info:
        out["nnpipe.round"] = (f"batch_size={info['batch_size']} sync_every={info['sync_every']} (chosen: round trip "
                               f"{1e3 * info['round/rtt_s']:.2f} ms, {1e6 * info['round/row_s']:.2f} us/row")
        if "round/sync_every_probe" in info:
            out["nnpipe.round"] += (f"; then from the first {int(info['round/retuned_after'])} rounds: "
                                    f"{1e3 * info['round/measured_idle_s']:.2f} ms waiting per round, "
                                    f"{1e6 * info['round/measured_row_s']:.2f} us/row, sync_every "
                                    f"{int(info['round/sync_every_probe'])} -> {info['sync_every']}")
        out["nnpipe.round"] += ")"
    return out
