"""Placing the training data on the workers once, as shards Dask can rebuild.

Shard ``i`` holds the contiguous global rows ``[lo_i, hi_i)``; sizes differ by
at most one row. Each shard is the result of a task (:func:`build_shard`)
whose inputs live in the task itself, so the scheduler keeps what it needs to
recompute the shard on another worker if the one holding it dies. (A
``scatter``-ed array would be lost with its worker.) After placement, rounds
send parameters only.
"""

from __future__ import annotations

import uuid
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from distributed import Client, Future

from nnpipe.distributed.trainer import build_shard


@dataclass
class Shard:
    """A placed shard: its global row range and the future holding its arrays."""

    index: int
    lo: int
    hi: int
    future: Future

    @property
    def rows(self) -> int:
        return self.hi - self.lo


def row_bounds(n_rows: int, n_shards: int) -> np.ndarray:
    """Boundaries ``b`` of shape (n_shards + 1,): shard ``i`` is rows ``b[i]:b[i+1]``.

    Balanced by rows: the first ``n_rows % n_shards`` shards get one extra row.
    """
    if n_shards < 1:
        raise ValueError(f"need at least one shard, got {n_shards!r}")
    if n_rows < n_shards:
        raise ValueError(f"cannot split {n_rows} rows into {n_shards} non-empty shards")
    sizes = np.full(n_shards, n_rows // n_shards, dtype=np.int64)
    sizes[: n_rows % n_shards] += 1
    return np.concatenate([[0], np.cumsum(sizes)])


def place_shards(client: Client, X: np.ndarray, Y: np.ndarray, workers: list[str]) -> list[Shard]:
    """Send shard ``i`` of ``(X, Y)`` to ``workers[i % len(workers)]``, once.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    Y : ndarray of shape (n_samples,) or (n_samples, n_outputs)
    workers : list of str
        One address per shard (repeats allowed).

    Returns
    -------
    list of Shard
        ``len(workers)`` shards; their futures may move to any worker on recovery.
    """
    bounds = row_bounds(len(X), len(workers))
    shards = []
    with warnings.catch_warnings():
        # Embedding the rows in the task is the point (it makes the shard
        # recomputable), so the "large graph" advice does not apply here.
        warnings.filterwarnings("ignore", message=".*[Ll]arge graph.*")
        warnings.filterwarnings("ignore", message=".*[Ll]arge object.*")
        for i, addr in enumerate(workers):
            lo, hi = int(bounds[i]), int(bounds[i + 1])
            fut = client.submit(
                build_shard, X[lo:hi], Y[lo:hi], lo,
                key=f"nnpipe-shard-{i}-{_token()}", workers=[addr], allow_other_workers=True, pure=False,
            )
            shards.append(Shard(i, lo, hi, fut))
    return shards


def shards_from_futures(futures: list[Future], sizes: list[int]) -> list[Shard]:
    """Wrap already-computed shard futures (e.g. built from dataframe partitions)."""
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [Shard(i, int(bounds[i]), int(bounds[i + 1]), f) for i, f in enumerate(futures)]


def _token() -> str:
    # Unique per placement, so two runs on one cluster never share (or release) each other's shards.
    return uuid.uuid4().hex[:12]


def describe(shards: list[Shard]) -> list[dict[str, Any]]:
    return [{"shard": s.index, "lo": s.lo, "hi": s.hi} for s in shards]
