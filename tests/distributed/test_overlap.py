"""``local-sgd`` with overlapped rounds (``overlap=1, 2``): the trainer's ledger, the merges, accuracy.

The loop runs on the in-process pool (deterministic); one test runs it on
the real cluster, where a trainer's worker holds a queued round.
"""

from __future__ import annotations

import numpy as np
import pytest

from nnpipe.config import TrainConfig
from nnpipe.core.network import NetworkSpec, init_params
from nnpipe.core.problem import Problem
from nnpipe.distributed import fit_distributed
from nnpipe.distributed.trainer import ShardTrainer, build_shard
from tests.distributed.fakes import fit_in_process
from tests.distributed.helpers import digits, small_net


def twin_trainers(data, config):
    X, y = data
    spec, theta0 = small_net("float64")
    shard = build_shard(X[:300], y[:300], 0)
    return (ShardTrainer(spec.to_dict(), shard, config, 0, 300),
            ShardTrainer(spec.to_dict(), shard, config, 0, 300), theta0)


def test_a_round_starts_from_the_global_parameters_plus_own_unmerged_deltas(data):
    cfg = TrainConfig(mode="local-sgd", optimizer="adam", lr=0.01, batch_size=32, dtype="float64", seed=2)
    a, b, theta0 = twin_trainers(data, cfg)
    (d0, _), *_ = a.overlap_round(theta0, 0, 0, 3, 0.01)
    # Round 1 goes out before round 0 is merged (merged=0): it starts where round 0 ended.
    (d1, _), *_ = a.overlap_round(theta0, 0, 1, 3, 0.01)
    e0 = b.local_round(theta0, 3, 0.01)[0].copy()
    e1 = b.local_round(e0, 3, 0.01)[0].copy()
    np.testing.assert_allclose(d0, e0 - theta0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(d1, e1 - e0, rtol=0, atol=1e-12)
    # Round 2 with rounds 0 and 1 merged into new parameters: those are the start, nothing added.
    merged = theta0 + 0.5 * (d0 + d1)
    (d2, _), *_ = a.overlap_round(merged, 2, 2, 3, 0.01)
    e2 = b.local_round(merged, 3, 0.01)[0].copy()
    np.testing.assert_allclose(d2, e2 - merged, rtol=0, atol=1e-12)
    assert set(a._own) == {2}  # the merged rounds' deltas are dropped


@pytest.mark.parametrize("depth", [1, 2])
def test_every_round_is_merged_once_as_the_row_weighted_mean_of_its_deltas(data, depth):
    X, y = data
    X, y = X[:301], y[:301]  # unequal shards: 151 and 150 rows
    spec, theta0 = small_net("float64")
    cfg = TrainConfig(mode="local-sgd", overlap=depth, sync_every=3, batch_size=16, epochs=3, lr=0.05,
                      optimizer="sgd", outer_optimizer="none", lr_scaling="none", dtype="float64", seed=1)
    # Trainer 1 is three times slower: trainer 0 runs ahead until the bound stops it.
    result, pool = fit_in_process(Problem(spec, theta0, X, y), cfg, durations={1: 3.0})
    deltas: dict[int, dict[int, np.ndarray]] = {}
    for tid, method, out in pool.log:
        if method == "overlap_round":
            # A trainer's rounds run in order: its n-th call is round n.
            deltas.setdefault(sum(tid in d for d in deltas.values()), {})[tid] = out[0][0]
    rows = {t.id: t.shard.rows for t in pool.trainers}
    expected = theta0.copy()
    for r in sorted(deltas):
        expected += sum(rows[t] * d for t, d in deltas[r].items()) / sum(rows.values())
    steps_per_epoch = -(-151 // 16)
    assert len(result.info["rounds_log"]) == 3 * -(-steps_per_epoch // 3)
    np.testing.assert_allclose(result.theta, expected, rtol=1e-12, atol=1e-12)
    assert [log["epoch"] for log in result.info["rounds_log"]][-1] == 2
    assert all(h > 0 for h in result.history["dist/consensus_distance"])


def test_a_fast_trainer_runs_at_most_overlap_rounds_ahead(data):
    X, y = data
    spec, theta0 = small_net("float64")
    cfg = TrainConfig(mode="local-sgd", overlap=1, sync_every=2, batch_size=16, epochs=1, lr=0.05,
                      dtype="float64", seed=1)
    _, pool = fit_in_process(Problem(spec, theta0, X, y), cfg, durations={1: 10.0})
    calls = [tid for tid, method, _ in pool.log if method == "overlap_round"]
    # Without a bound trainer 0 would finish the epoch before trainer 1's first result.
    ahead = max(calls[:i].count(0) - calls[:i].count(1) for i in range(1, len(calls) + 1))
    assert ahead <= 2  # its round in flight plus the one sent when round j-1 merged
    assert calls.count(0) == calls.count(1)


@pytest.mark.parametrize("depth", [1, 2])
def test_overlap_keeps_local_sgd_accuracy_on_digits(depth):
    Xtr, ytr, Xte, yte = digits()
    spec = NetworkSpec(64, (32,), ("relu",), 10, dtype="float64")
    theta0 = init_params(spec, 0)
    base = dict(mode="local-sgd", sync_every=5, batch_size=32, epochs=8, lr=1e-3, dtype="float64", seed=0,
                workers=4)
    problem = Problem(spec, theta0, Xtr, ytr, (Xte, yte))
    plain, _ = fit_in_process(problem, TrainConfig(**base), jitter=0.3)
    over, _ = fit_in_process(problem, TrainConfig(**base, overlap=depth), jitter=0.3)
    assert plain.history["val/accuracy"][-1] > 0.9
    assert over.history["val/accuracy"][-1] > plain.history["val/accuracy"][-1] - 0.01


def test_overlap_is_validated_and_only_a_local_sgd_setting():
    with pytest.raises(ValueError, match="'overlap'.*got 3"):
        TrainConfig(mode="local-sgd", overlap=3)
    assert "overlap" not in TrainConfig(mode="async", overlap=1).applicable()
    assert TrainConfig(mode="local-sgd", overlap=2).applicable()["overlap"] == 2


@pytest.mark.cluster
@pytest.mark.parametrize("depth", [1, 2])
def test_overlapped_rounds_on_real_workers_are_reproducible_and_equal_the_in_process_loop(client, data, depth):
    X, y = data
    spec, theta0 = small_net("float64")
    cfg = TrainConfig(mode="local-sgd", overlap=depth, sync_every=4, batch_size=32, epochs=5, seed=5, lr=0.01,
                      dtype="float64")
    problem = Problem(spec, theta0, X, y, (X, y))
    a = fit_distributed(problem, cfg, client=client)
    b = fit_distributed(problem, cfg, client=client)
    # Each round starts from the merges it is due, whatever order the results arrived in.
    np.testing.assert_array_equal(a.theta, b.theta)
    here, _ = fit_in_process(problem, cfg, durations={1: 2.5})
    np.testing.assert_allclose(a.theta, here.theta, rtol=1e-12, atol=1e-12)
    assert a.history["val/accuracy"][-1] > 0.7
    assert len(a.info["rounds_log"]) == 5 * 3  # shards of 300 rows: 10 steps of 32, rounds of 4, 4, 2
    assert all(0 <= s < 5 for s in a.history["dist/idle_s"])
    # A round sends the parameters and gets a delta back: the same bytes as plain local-sgd.
    assert a.info["bytes_sent_per_round"] == pytest.approx(2 * theta0.nbytes, rel=0.01)


def test_a_round_that_arrives_before_the_one_it_follows_is_handed_back_untouched(data):
    cfg = TrainConfig(mode="local-sgd", optimizer="adam", lr=0.01, batch_size=32, dtype="float64", seed=2)
    a, b, theta0 = twin_trainers(data, cfg)
    (early, _), loss, rows, *_ = a.overlap_round(theta0, 0, 1, 3, 0.01, after=0)
    assert early is None and rows == 0
    (d0, _), *_ = a.overlap_round(theta0, 0, 0, 3, 0.01)
    (d1, _), *_ = a.overlap_round(theta0, 0, 1, 3, 0.01, after=0)
    e0 = b.local_round(theta0, 3, 0.01)[0].copy()
    e1 = b.local_round(e0, 3, 0.01)[0].copy()
    np.testing.assert_allclose(d1, e1 - e0, rtol=0, atol=1e-12)  # as if the calls had come in order


def test_the_retuner_never_shrinks_an_overlapped_round_below_the_probes_size(data):
    from nnpipe.distributed.overlap import OverlapAverage
    from nnpipe.distributed.round_size import RoundRetuner
    from tests.distributed.fakes import InProcessPool

    X, y = data
    spec, theta0 = small_net("float64")
    cfg = TrainConfig(mode="local-sgd", overlap=1, sync_every=6, batch_size=16, epochs=1, dtype="float64")
    rule = OverlapAverage(InProcessPool(X, y, spec, cfg, 2), cfg, theta0.copy())
    rule.retuner = RoundRetuner(cfg, len(X), 2)
    for _ in range(6):  # rounds with almost no idle time: on idle alone the retuner picks K=1
        rule.observe_round(0.0101, 0.01, 16 * 6)
    assert rule.k == 6 and rule.retuner.facts["round/sync_every"] == 6.0
