"""What ``nnpipe train`` and ``nnpipe sweep`` check before anything expensive starts.

Order, cheapest first: the configuration (already validated when built), the
dataset (path, format, header; every row too for files up to 64 MiB), the tracking store (a short
probe without MLflow's minutes of retries) and a configured Dask scheduler
(a TCP connect). Each failure is one line and exit code 1 within seconds,
before Prefect, an MLflow run or a cluster is started. The checks themselves
live in the layers below; this module only orders them and words the exit.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

STORE_TIMEOUT = 5.0
FULL_CHECK_BYTES = 64 * 2**20  # files up to this size are read (and every row checked) before the flow
SCHEDULER_TIMEOUT = 5.0


def preflight(cfg: Any, default_uri: Callable[[str | None], str], fail: Callable[[str], None],
              note: Callable[[str], None] = lambda line: None) -> None:
    """Check ``cfg`` (a ``PipelineConfig``) and set its clean tracking URI; ``fail(message)`` on a problem.

    ``note(line)`` receives what is worth a word but no refusal (a numeric target taken as classes).
    """
    from nnpipe.data import BUILTIN, DataError, check_class_sizes, check_source, is_parts, load_dataset

    try:
        if is_parts(cfg.dataset) or _is_url(cfg.dataset):
            from nnpipe.sources import open_source

            # A folder, glob or URL (s3:// through fsspec): every part's columns from CSV headers and Parquet
            # footers only, so parts that differ are named now, not after the runs start. For an s3:// URL
            # this lists the bucket first: a missing bucket, bad keys or a dead endpoint is one line too.
            open_source(cfg.dataset, cfg.target, cfg.features)
        # a large source (directory, glob, URL, big file) is validated part by part on the workers
        if not cfg.large_source:
            check_source(cfg.dataset, cfg.target)
        if not cfg.large_source and _small_file(cfg.dataset):  # every row checked now: a bad value is named in seconds, not after start-up
            ds = load_dataset(cfg.dataset, cfg.target, cfg.task, cfg.features)
            check_class_sizes(ds, cfg.test_size, cfg.val_size)
            _check_target(cfg, ds.task, fail)
            for line in ds.warnings:
                if "--task" in line:
                    note(f"note: {ds.source}: {line}")
        elif cfg.train.until and cfg.dataset in BUILTIN:  # a built-in's task is known at once
            _check_target(cfg, load_dataset(cfg.dataset).task, fail)
    except DataError as exc:
        fail(str(exc))
    from nnpipe.redact import move_credentials_to_env, redact

    # The URI travels as a Prefect flow parameter and an MLflow param: without its password.
    uri = move_credentials_to_env(default_uri(cfg.tracking_uri))
    cfg.tracking_uri = uri
    from nnpipe.tracking.preflight import StoreUnavailable, check_store

    try:
        check_store(uri, timeout=STORE_TIMEOUT)
    except StoreUnavailable as exc:
        fail(redact(str(exc)))
    from nnpipe.tracking.prometheus import check_port_free, port_from_env

    try:  # a port asked for and taken is refused now, not moved to another the user is not watching
        port = cfg.metrics_port if cfg.metrics_port is not None else port_from_env()
        if port:
            check_port_free(port)
    except (OSError, ValueError) as exc:
        fail(str(exc))
    from nnpipe.tracking.pages import describe_found, sweep_at_start

    # Alias moves made in the UI since nnpipe last looked go into the history and pages first.
    for line in describe_found(sweep_at_start(uri, warn=lambda m: print(f"warning: {m}", file=sys.stderr))):
        print(line, file=sys.stderr)
    address = cfg.scheduler_address or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if cfg.distributed and address:
        from nnpipe.distributed.cluster import check_scheduler

        try:
            check_scheduler(address, timeout=SCHEDULER_TIMEOUT)
        except (ConnectionError, ValueError) as exc:
            fail(redact(str(exc)))


def _check_target(cfg: Any, task: str, fail: Callable[[str], None]) -> None:
    """``--until val/mse`` on a classification (or a val/ metric without validation rows): refused before any run opens."""
    target = cfg.train.target()
    if target is not None:
        try:
            target.check_task(task, cfg.val_size > 0)
        except ValueError as exc:
            fail(str(exc))


def _is_url(source: Any) -> bool:
    return "://" in str(source)


def _small_file(source: str) -> bool:
    """A file small enough to read twice (here, then in the flow) at no noticeable cost."""
    try:
        return Path(source).is_file() and Path(source).stat().st_size <= FULL_CHECK_BYTES
    except OSError:
        return False
