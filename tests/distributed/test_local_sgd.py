"""``local-sgd``: K local steps, then row-weighted parameter averaging."""

from __future__ import annotations

import numpy as np
import pytest

from nnpipe.config import TrainConfig
from nnpipe.core.problem import Problem
from nnpipe.distributed import fit_distributed
from nnpipe.distributed.local_sgd import consensus_distance, weighted_average
from nnpipe.results import DivergenceError
from tests.distributed.helpers import rel_diff, small_net

pytestmark = pytest.mark.cluster


def test_k1_plain_sgd_equals_sync_with_unequal_shards(client, data):
    X, y = data
    X, y = X[:201], y[:201]  # shards of 101 and 100 rows
    spec, theta0 = small_net("float64")
    common = dict(optimizer="sgd", lr=0.1, epochs=4, seed=3, dtype="float64", workers=2, l2=1e-3)
    # Each worker's batch is its whole shard; the sync global batch is all rows:
    # then one averaging round is one sync step, if the weights are rows / total rows.
    # Plain averaging: no outer optimizer, no learning-rate scaling or warm-up.
    plain = dict(outer_optimizer="none", lr_scaling="none", lr_warmup_epochs=0)
    problem = Problem(spec, theta0, X, y)
    local = fit_distributed(problem, TrainConfig(mode="local-sgd", sync_every=1, batch_size=101, **plain, **common),
                            client=client)
    sync = fit_distributed(problem, TrainConfig(mode="sync", batch_size=201, **common), client=client)
    assert [s["hi"] - s["lo"] for s in local.info["shards"]] == [101, 100]
    assert rel_diff(local.theta, sync.theta) < 1e-9
    assert rel_diff(local.theta, theta0) > 1e-3


def test_weighted_average_divides_by_contributing_rows():
    a, b, c = np.full(4, 1.0), np.full(4, 4.0), np.full(4, 100.0)
    # Shards of 30, 10 and 60 rows; only the first two contribute this round.
    out = weighted_average([a, b], [30, 10])
    np.testing.assert_allclose(out, (30 * 1.0 + 10 * 4.0) / 40)
    np.testing.assert_allclose(weighted_average([a, b, c], [30, 10, 60]), (30 + 40 + 6000) / 100)
    assert consensus_distance([a, b], np.full(4, 2.5)) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="rows=\\[1\\]"):
        weighted_average([a, b], [1])


def test_local_sgd_learns_reproducibly_and_logs_consensus(client, data):
    X, y = data
    spec, theta0 = small_net("float32")
    cfg = TrainConfig(mode="local-sgd", sync_every=4, batch_size=32, epochs=6, seed=5, lr=0.01, dtype="float32")
    seen = []
    problem = Problem(spec, theta0, X, y, (X, y))
    a = fit_distributed(problem, cfg, client=client, callbacks=[lambda e, logs: seen.append(logs)])
    b = fit_distributed(problem, cfg, client=client)
    np.testing.assert_array_equal(a.theta, b.theta)
    assert a.history["val/accuracy"][-1] > a.history["val/accuracy"][0]
    assert a.history["val/accuracy"][-1] > 0.7
    assert len(seen) == 6 and all(logs["dist/consensus_distance"] > 0 for logs in seen)
    assert {"dist/straggler_wait_s", "worker/0/samples_per_s", "worker/1/samples_per_s"} <= set(seen[0])
    # One round: each worker gets the parameters and sends its own back.
    assert a.info["bytes_sent_per_round"] + a.info["bytes_received_per_round"] <= 2 * 2 * theta0.nbytes


def test_local_sgd_divergence_names_round_and_worker(client, data):
    X, y = data
    spec, theta0 = small_net("float32")
    cfg = TrainConfig(mode="local-sgd", optimizer="sgd", lr=1e25, sync_every=3, batch_size=50, epochs=2,
                      dtype="float32")
    with pytest.raises(DivergenceError, match=r"worker tcp://\S+ \(trainer \d, shard \d\).*round 0"):
        fit_distributed(Problem(spec, theta0, X, y), cfg, client=client)


def test_public_actor_path_gives_the_same_result_as_the_direct_call(client, data, monkeypatch):
    from nnpipe.distributed import rpc

    X, y = data
    spec, theta0 = small_net("float64")
    cfg = TrainConfig(mode="local-sgd", sync_every=4, batch_size=32, epochs=2, seed=5, dtype="float64")
    problem = Problem(spec, theta0, X, y)
    direct = fit_distributed(problem, cfg, client=client)
    # As if Worker.actor_execute had changed: every call goes through distributed.Actor instead.
    monkeypatch.setitem(rpc._direct, "ok", False)
    monkeypatch.setitem(rpc._direct, "warned", True)
    public = fit_distributed(problem, cfg, client=client)
    np.testing.assert_array_equal(public.theta, direct.theta)
