"""Streamed shards on a real cluster decode each piece once; the cache is gone when the run ends, however it ends."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import distributed
import numpy as np
import pytest

import nnpipe
from nnpipe.config import TrainConfig
from nnpipe.distributed import worker_addresses
from nnpipe.distributed.frames import cluster_runner
from nnpipe.sources import open_source, segment_cache
from nnpipe.sources.prep import TRAIN, prepare
from tests.distributed.helpers import local_cluster
from tests.distributed.test_faults import kill_worker
from tests.distributed.test_frames import parts, table  # noqa: F401  (module fixtures)

pytestmark = pytest.mark.cluster


def cache_dirs(client, dead: tuple[int, ...] | list[int] = ()) -> list[Path]:
    """The cache directories of this cluster's workers and of its ``dead`` worker pids, wherever they are.

    The workers' local directories share one parent with every other Dask
    cluster on the machine (another test file's, under xdist): only the
    directories whose owner pid is one of ours count.
    """
    import os

    info = client.run(lambda dask_worker: (dask_worker.local_directory, os.getpid()))
    bases = {Path(d).parent for d, _ in info.values()}
    ours = {f"-p{pid}" for pid in [*(pid for _, pid in info.values()), *dead]}
    return sorted(p for b in bases for p in b.glob(f"*/{segment_cache.DIR_NAME}/*")
                  if any(p.name.endswith(suffix) for suffix in ours))


def n_segments(prepared, workers: int) -> int:
    from nnpipe.distributed.shards import row_bounds

    b = row_bounds(prepared.rows(TRAIN), workers)
    return sum(len(prepared.segments(TRAIN, int(b[i]), int(b[i + 1]))) for i in range(workers))


@pytest.mark.parametrize("mode", ["sync", "local-sgd"])
def test_pieces_decoded_once_same_result_and_cache_removed(client, parts, mode, caplog):  # noqa: F811
    prepared = prepare(open_source(str(parts), "label", block_bytes=1), cluster_runner(client), seed=4)
    cfg = TrainConfig(mode=mode, workers=2, epochs=3, batch_size=32, sync_every=4, seed=4, dtype="float64",
                      stream=True)
    with caplog.at_level(logging.INFO, logger="nnpipe"):
        cached = nnpipe.train(prepared, cfg, hidden=(16,), client=client)
    assert cache_dirs(client) == []
    plain = nnpipe.train(prepared, dataclasses.replace(cfg, stream_cache=False), hidden=(16,), client=client)
    # The cache holds the decoded bytes and the seeded order is unchanged: the same run, exactly.
    np.testing.assert_array_equal(cached.theta, plain.theta)
    n_seg = n_segments(prepared, 2)
    assert cached.info["stream_decoded"] == n_seg  # each piece once, over three epochs
    # Epochs 2 and 3 read from the cache (local-sgd's passes run ahead of or behind epochs: at least one pass).
    want = 2 * n_seg if mode == "sync" else n_seg
    assert cached.info["stream_cache_reads"] >= want
    assert "stream_decoded" not in plain.info and cached.info["data_path"] == "streaming"
    assert f"streaming: {n_seg} piece(s) decoded" in caplog.text


def test_cache_removed_after_a_failed_run(client, parts):  # noqa: F811
    prepared = prepare(open_source(str(parts), "label", block_bytes=1), cluster_runner(client), seed=0)
    seen = []

    def fail_in_epoch_two(epoch, logs):
        seen.append(cache_dirs(client))
        if epoch == 1:
            raise RuntimeError("stop here")

    cfg = TrainConfig(mode="local-sgd", workers=2, epochs=4, batch_size=32, sync_every=4, stream=True)
    with pytest.raises(RuntimeError, match="stop here"):
        nnpipe.train(prepared, cfg, hidden=(16,), client=client, callbacks=[fail_in_epoch_two])
    assert len(seen[0]) == 2  # one directory per shard while the run trained
    assert cache_dirs(client) == []


def test_cache_of_a_killed_worker_is_removed_when_the_run_ends(parts):  # noqa: F811
    """SIGKILL a worker after the first epoch: its cache directory cannot be cleaned by it; the run's end removes it."""
    cfg = TrainConfig(mode="local-sgd", workers=2, epochs=3, batch_size=32, sync_every=4, seed=3, stream=True)
    with local_cluster(2) as cluster, distributed.Client(cluster) as c:
        c.wait_for_workers(2)
        prepared = prepare(open_source(str(parts), "label", block_bytes=1), cluster_runner(c), seed=3)
        victim = worker_addresses(c)[0]
        killed, before = [], []

        def kill_after_first_epoch(epoch, logs):
            if epoch == 0:
                before.extend(cache_dirs(c))
                killed.append(kill_worker(c, victim))

        out = nnpipe.train(prepared, cfg, hidden=(16,), client=c, callbacks=[kill_after_first_epoch])
        c.wait_for_workers(2)
        after = cache_dirs(c, dead=killed)
    assert killed and out.epochs_run == 3
    assert any(p.name.endswith(f"-p{killed[0]}") for p in before)  # the victim had its cache on disk
    assert after == []
