"""``single`` mode on a prepared large source: the training rows in memory when they fit, else streamed.

In memory it is exactly :func:`nnpipe.core.training.fit` on the training rows (read
piece by piece into one array); streamed it is
:func:`nnpipe.sources.streaming.fit_stream`, with validation read where the rows are.
The budget is ``config.memory_share`` of this machine's memory.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from nnpipe.config import TrainConfig
from nnpipe.core.network import NetworkSpec
from nnpipe.core.problem import Problem
from nnpipe.core.training import fit
from nnpipe.results import Callback, FitResult
from nnpipe.sources import segment_cache
from nnpipe.sources.evaluate import evaluate, prep_fields
from nnpipe.sources.prep import TRAIN, VAL, PreparedSource, local_runner
from nnpipe.sources.streaming import RowStream, fit_stream, shard_arrays, shard_bytes

log = logging.getLogger("nnpipe")


def physical_memory() -> int:
    """This machine's RAM in bytes (the single-process budget's base)."""
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def fit_single_source(prepared: PreparedSource, spec: NetworkSpec, theta: np.ndarray, config: TrainConfig,
                      callbacks: tuple[Callback, ...] | list[Callback] = ()) -> FitResult:
    """Train in this process on ``prepared``'s training rows; ``info["data_path"]`` says how."""
    kw = {"spec": spec.to_dict(), "prep": prep_fields(prepared), "read": prepared.read_kwargs()}
    n_train, n_val = prepared.rows(TRAIN), prepared.rows(VAL)
    need = shard_bytes(spec, n_train + n_val)
    budget = int(config.memory_share * physical_memory())
    stream = config.stream if config.stream is not None else need > budget
    log.info("source %s, single process: %s (%.1f MB of rows, budget %.1f MB)", prepared.source.location,
             "streaming" if stream else "in-memory", need / 1e6, budget / 1e6)
    if stream:
        root = segment_cache.single_process_root()
        run = segment_cache.new_run_id() if config.stream_cache else None
        cache = segment_cache.SegmentCache(str(root), run, 0) if run else None
        rows = RowStream(prepared.segments(TRAIN, 0, n_train), 0, config.seed, 0, cache=cache, code=TRAIN, **kw)

        def validation(theta: np.ndarray) -> dict[str, float]:
            return evaluate(prepared, spec, theta, VAL, local_runner, raw_units=False)[0]

        try:
            if run:
                segment_cache.clear([root])  # stale directories of processes that died mid-run
            result = fit_stream(spec, theta, rows, config, validation=validation if n_val else None,
                                callbacks=callbacks)
        finally:
            rows.close()
            counts = segment_cache.clear([root], run) if run else None
        if counts is not None:
            log.info("streaming: %d piece(s) decoded, %d read from the cache; cache removed", counts["decoded"],
                     counts["cache_reads"])
            result.info.update({"stream_decoded": counts["decoded"], "stream_cache_reads": counts["cache_reads"]})
    else:
        train = shard_arrays(prepared.segments(TRAIN, 0, n_train), 0, code=TRAIN, **kw)
        val = shard_arrays(prepared.segments(VAL, 0, n_val), 0, code=VAL, **kw) if n_val else None
        problem = Problem(spec, theta, train["X"], train["Y"], (val["X"], val["Y"]) if val else None)
        result = fit(problem, config, callbacks=callbacks)
        result.info["data_path"] = "in-memory"
    result.info.update({"shard_bytes": int(need), "memory_budget": budget})
    return result
