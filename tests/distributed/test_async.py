"""``async``: merges as results arrive; stragglers never hold the others; joiners get work."""

from __future__ import annotations

import distributed
import numpy as np
import pytest

from nnpipe.config import TrainConfig
from nnpipe.core.problem import Problem
from nnpipe.distributed import fit_distributed
from nnpipe.results import DivergenceError
from tests.distributed.helpers import local_cluster, small_net

pytestmark = pytest.mark.cluster


def test_async_learns_and_logs_staleness(client, data):
    X, y = data
    spec, theta0 = small_net("float32")
    # Long enough (~60 rounds) that a worker starved by a busy machine still gets turns.
    cfg = TrainConfig(mode="async", sync_every=5, batch_size=32, epochs=4, lr=0.01, dtype="float32", seed=2)
    seen = []
    # Trainer 0 naps 30 ms a round, so trainer 1 always merges while it computes: its results
    # are stale by construction, not by the luck of a race (which a busy machine can lose).
    out = fit_distributed(Problem(spec, theta0, np.tile(X, (4, 1)), np.tile(y, 4), (X, y)), cfg, client=client,
                          callbacks=[lambda e, logs: seen.append((e, logs))], delays={0: 0.03})
    assert [e for e, _ in seen] == list(range(4))
    assert out.history["val/accuracy"][-1] > 0.7
    for _, logs in seen:
        # the fast trainer reports every epoch; the napping one only in epochs where a round of it ended
        assert {"dist/staleness", "dist/staleness_max", "worker/1/samples_per_s", "train/loss"} <= set(logs)
        assert 0 <= logs["dist/staleness"] <= logs["dist/staleness_max"]
    assert "worker/0/samples_per_s" in set().union(*(logs for _, logs in seen))
    assert max(m["staleness"] for m in out.info["merges"] if m["trainer"] == 0) >= 1
    assert set(out.info["merges_by_trainer"]) == {0, 1}
    assert out.info["bytes_sent_per_round"] + out.info["bytes_received_per_round"] <= 2 * 2 * theta0.nbytes


def test_straggler_does_not_hold_the_fast_worker(client, data):
    # The merge order in detail (and the drop policy) is checked on the in-process pool in test_rules.py;
    # here a real slow worker process.
    X, y = data
    spec, theta0 = small_net("float32")
    X, y = np.tile(X, (8, 1)), np.tile(y, 8)
    cfg = TrainConfig(mode="async", sync_every=2, batch_size=32, epochs=2, lr=0.01, dtype="float32",
                      max_staleness=1, staleness_policy="downweight")
    # Trainer 0 sleeps 50 ms every round; a fast round takes ~2 ms.
    out = fit_distributed(Problem(spec, theta0, X, y), cfg, client=client, delays={0: 0.05})
    merges = out.info["merges"]
    by = out.info["merges_by_trainer"]
    assert by[1] > 20 and by[1] >= 2 * by.get(0, 0)  # ~25x on an idle machine; far less when it is busy
    # The slow trainer's results come back after several fast merges: stale, so down-weighted.
    slow = [m for m in merges if m["trainer"] == 0]
    assert slow and all(m["staleness"] > 1 and m["weight"] < 1 for m in slow)


def test_worker_joining_mid_run_is_put_to_work(data):
    X, y = data
    spec, theta0 = small_net("float32")
    X, y = np.tile(X, (4, 1)), np.tile(y, 4)
    cfg = TrainConfig(mode="async", workers=1, sync_every=5, batch_size=32, epochs=8, lr=0.005, dtype="float32")
    with local_cluster(1) as cluster, distributed.Client(cluster) as client:
        scaled = []

        def add_worker(epoch, logs):
            if not scaled:
                cluster.scale(2)
                client.wait_for_workers(2, timeout=60)
                scaled.append(epoch)

        # Trainer 0 sleeps 20 ms a round: long enough a run for a new worker process to start.
        out = fit_distributed(Problem(spec, theta0, X, y), cfg, client=client, callbacks=[add_worker],
                              delays={0: 0.02})
    joined = [e for e in out.info["events"] if e["event"] == "worker_joined"]
    assert len(joined) == 1
    assert out.info["merges_by_trainer"].get(joined[0]["trainer"], 0) >= 1


def test_async_divergence_names_merge_and_worker(client, data):
    X, y = data
    spec, theta0 = small_net("float32")
    cfg = TrainConfig(mode="async", optimizer="sgd", lr=1e25, sync_every=3, batch_size=50, epochs=2, dtype="float32")
    with pytest.raises(DivergenceError, match=r"worker tcp://\S+ \(trainer \d.*merge \d+"):
        fit_distributed(Problem(spec, theta0, X, y), cfg, client=client)


def test_async_uses_only_the_workers_asked_for(client, data):
    X, y = data
    spec, theta0 = small_net("float32")
    cfg = TrainConfig(mode="async", workers=1, sync_every=5, batch_size=32, epochs=8, lr=0.01, dtype="float32")
    # Trainer 0 sleeps 10 ms a round: a run of ~1.5 s, long enough for the loop to look for new workers.
    out = fit_distributed(Problem(spec, theta0, np.tile(X, (4, 1)), np.tile(y, 4)), cfg, client=client,
                          delays={0: 0.01})
    # The session cluster has two workers; the idle one was there from the start, so it is not a joiner.
    assert out.info["workers"] == 1
    assert set(out.info["merges_by_trainer"]) == {0}
    assert not [e for e in out.info["events"] if e["event"] == "worker_joined"]
