"""Training from a CSV or Parquet source bigger than the driver's memory.

The workers read the source in partitions (``dask.dataframe``); the scaling
statistics, the class list and the partition lengths are computed on the
cluster and only those small results reach the driver. Shard ``i`` is a task
that takes the partitions overlapping its global row range ``[lo_i, hi_i)``,
slices, scales and encodes them on a worker, so shards are balanced by rows,
keep the file's row order (``sync`` then equals in-memory training on the same
scaled rows) and are rebuilt from the source if their worker dies. The rows
themselves never travel to the driver.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd

from nnpipe.config import TrainConfig
from nnpipe.distributed.cluster import connect, wait_for_workers
from nnpipe.distributed.shards import row_bounds, shards_from_futures
from nnpipe.network import NetworkSpec, init_params
from nnpipe.targets import encode_targets
from nnpipe.results import Callback, FitResult

log = logging.getLogger("nnpipe.distributed")


@dataclass
class SourceFit:
    """What a model trained from a source needs besides its parameters.

    Attributes
    ----------
    result : FitResult
    spec : NetworkSpec
    mean, scale : ndarray of shape (n_features,)
        Standardisation: the network sees ``(x - mean) / scale``.
    classes : ndarray or None
        Sorted labels (classification); the network predicts indices into it.
    features : list of str
        Feature columns, in the order the network expects.
    n_rows : int
    """

    result: FitResult
    spec: NetworkSpec
    mean: np.ndarray
    scale: np.ndarray
    classes: np.ndarray | None
    features: list[str]
    n_rows: int


def read_source(path: str | Path, blocksize: str | int = "64MB") -> dd.DataFrame:
    """A lazy dataframe over a ``.csv`` or ``.parquet`` file or directory (read by the workers)."""
    p = str(path)
    if p.endswith((".parquet", ".pq")) or Path(p).is_dir():
        return dd.read_parquet(p)
    if p.endswith((".csv", ".csv.gz", ".txt")):
        return dd.read_csv(p, blocksize=blocksize if not p.endswith(".gz") else None)
    raise ValueError(f"unknown source format for {p!r}: expected .csv or .parquet")


def _distinct(labels: pd.Series) -> np.ndarray:
    return np.unique(labels.to_numpy())


def frame_shard(parts: list[pd.DataFrame], starts: list[int], lo: int, hi: int, features: list[str], target: str,
                mean: np.ndarray, scale: np.ndarray, head: str, classes: np.ndarray | None,
                dtype: str) -> dict[str, Any]:
    """Runs on a worker: rows ``[lo, hi)`` of the source, scaled and encoded, as a shard."""
    pieces = []
    for df, start in zip(parts, starts):
        a, b = max(lo - start, 0), min(hi - start, len(df))
        if b > a:
            pieces.append(df.iloc[a:b])
    df = pd.concat(pieces) if len(pieces) > 1 else pieces[0]
    X = df[features].to_numpy(dtype=np.float64)
    if not np.isfinite(X).all():
        bad = np.argwhere(~np.isfinite(X))[0]
        raise ValueError(f"non-finite value in column {features[bad[1]]!r} at row {lo + int(bad[0])}")
    X = ((X - mean) / scale).astype(dtype)
    Y = encode_targets(df[target].to_numpy(), head, classes, dtype)
    return {"X": np.ascontiguousarray(X), "Y": np.ascontiguousarray(Y), "lo": int(lo)}


def place_frame_shards(client: Any, ddf: dd.DataFrame, n_shards: int, *, features: list[str], target: str,
                       mean: np.ndarray, scale: np.ndarray, head: str, classes: np.ndarray | None, dtype: str,
                       lengths: list[int]) -> list:
    """One recomputable shard future per worker, built on the workers from the partitions."""
    parts = ddf.to_delayed()
    starts = np.concatenate([[0], np.cumsum(lengths)])
    bounds = row_bounds(int(starts[-1]), n_shards)
    build = dask.delayed(frame_shard, pure=True)
    tasks = []
    run = uuid.uuid4().hex[:8]  # shard keys unique per run: one run's release never touches another's
    for i in range(n_shards):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        idx = [j for j in range(len(parts)) if starts[j] < hi and starts[j + 1] > lo]
        tasks.append(build([parts[j] for j in idx], [int(starts[j]) for j in idx], lo, hi, features, target,
                           mean, scale, head, classes, dtype, dask_key_name=f"nnpipe-frame-shard-{i}-{lo}-{hi}-{run}"))
    futures = client.compute(tasks)  # one graph: a partition shared by two shards is read once
    return shards_from_futures(futures, [int(bounds[i + 1] - bounds[i]) for i in range(n_shards)])


def fit_source(
    path: str | Path,
    target: str,
    config: TrainConfig,
    *,
    hidden: tuple[int, ...] = (64,),
    activations: str | tuple[str, ...] = "relu",
    head: str = "softmax",
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    callbacks: tuple[Callback, ...] | list[Callback] = (),
    client: Any = None,
    address: str | None = None,
    blocksize: str | int = "64MB",
) -> SourceFit:
    """Train on a CSV/Parquet source without loading it on the driver.

    Parameters
    ----------
    path : str or Path
        ``.csv`` file or ``.parquet`` file/directory; every column but ``target`` is a feature.
    target : str
        The label column.
    config : TrainConfig
        ``mode`` must be a distributed one; ``workers`` shards.
    hidden, activations, head
        The network (inputs and outputs follow from the source).
    validation : (X_raw, y_raw), optional
        Small held-out data in the source's raw units; scaled on the driver.

    Returns
    -------
    SourceFit
    """
    from nnpipe.distributed import train_on_shards

    ddf = read_source(path, blocksize)
    if target not in ddf.columns:
        raise ValueError(f"target column {target!r} not in {path}: columns are {list(ddf.columns)}")
    features = [c for c in ddf.columns if c != target]
    with connect(address=address, client=client, workers=config.workers) as c:
        addresses = wait_for_workers(c, config.workers)
        stats = [ddf[features].mean(), ddf[features].std(ddof=0), ddf.map_partitions(len)]
        if head != "identity":
            # Distinct labels per partition, merged on the driver: a tree of tiny
            # results instead of the shuffle that ``Series.unique`` would start.
            distinct = [dask.delayed(_distinct)(p) for p in ddf[target].to_delayed()]
        got = c.compute(stats, sync=True)  # small results only: vectors and counts
        if head != "identity":
            got.append(c.compute(distinct, sync=True))
        mean = np.array(got[0], dtype=np.float64)
        scale = np.array(got[1], dtype=np.float64)
        scale[scale == 0] = 1.0  # a constant column: centre it, do not divide by zero
        lengths = [int(v) for v in np.asarray(got[2])]
        classes = np.unique(np.concatenate(got[3])) if head != "identity" else None
        n_outputs = len(classes) if head == "softmax" else 1
        spec = NetworkSpec(len(features), tuple(hidden), activations, n_outputs, head=head, dtype=config.dtype)
        shards = place_frame_shards(c, ddf, config.workers, features=features, target=target, mean=mean,
                                    scale=scale, head=head, classes=classes, dtype=config.dtype, lengths=lengths)
        if validation is not None:
            Xv = ((np.asarray(validation[0], dtype=np.float64) - mean) / scale).astype(config.dtype)
            validation = (Xv, encode_targets(np.asarray(validation[1]), head, classes, config.dtype))
        try:
            result = train_on_shards(c, shards, spec, init_params(spec, config.seed), config,
                                     validation=validation, callbacks=callbacks, addresses=addresses)
        finally:
            for s in shards:
                s.future.release()
    result.info["source"] = str(path)
    return SourceFit(result, spec, mean, scale, classes, features, int(sum(lengths)))
