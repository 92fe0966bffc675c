"""The merge rules, driven by the in-process pool (deterministic, no cluster).

Outer optimizer, warm-up, staleness scaling, merge order, stragglers, and the
learning rate and batch checks around them. One real-cluster test per
behaviour lives in test_sync.py, test_local_sgd.py and test_async.py.
"""

from __future__ import annotations

from collections import defaultdict, deque

import distributed
import numpy as np
import pytest
from packaging.version import Version

from nnpipe import checkpoint
from nnpipe.config import TrainConfig
from nnpipe.core.network import NetworkSpec, init_params
from nnpipe.core.problem import Problem
from nnpipe.core.training import fit
from nnpipe.distributed import rpc
from nnpipe.distributed.async_ import staleness_weight
from nnpipe.distributed.outer import OuterOptimizer
from nnpipe.distributed.rounds import epoch_lr, rows_per_step_warning, warn_small_steps
from tests.distributed.fakes import fit_in_process
from tests.distributed.helpers import digits, rel_diff, small_net


def replay_async(pool, merges, theta0, mixing, outer=None):
    """theta0 with every merge re-applied by hand, from the deltas the trainers returned (in call order)."""
    deltas = defaultdict(deque)
    for tid, method, result in pool.log:
        if method == "local_round":
            deltas[tid].append(result[0])
    theta = theta0.copy()
    for m in merges:
        target = theta + mixing * m["weight"] * deltas[m["trainer"]].popleft()
        if outer is None:
            theta = target
        else:
            outer.apply(theta, target)
    return theta


# ---- outer optimizer ------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["local-sgd", "async"])
def test_outer_sgd_lr1_without_momentum_is_plain_averaging_exactly(data, mode):
    X, y = data
    spec, theta0 = small_net("float64")
    kw = dict(mode=mode, epochs=3, batch_size=40, sync_every=3, dtype="float64", seed=2, workers=3)
    problem = Problem(spec, theta0, X, y)
    plain, _ = fit_in_process(problem, TrainConfig(outer_optimizer="none", **kw))
    outer, _ = fit_in_process(problem, TrainConfig(outer_optimizer="sgd", outer_lr=1.0, outer_momentum=0.0, **kw))
    np.testing.assert_array_equal(outer.theta, plain.theta)
    assert rel_diff(plain.theta, theta0) > 1e-2


def test_nesterov_outer_steps_match_a_hand_worked_example():
    theta = np.array([1.0, 2.0])
    opt = OuterOptimizer("nesterov", lr=0.5, momentum=0.9, theta=theta)
    # Round 1: g = theta - target = [1, 1]; v = g; step = -lr * (g + 0.9 v) = -0.95 each.
    norm = opt.apply(theta, np.array([0.0, 1.0]))
    np.testing.assert_allclose(theta, [0.05, 1.05], rtol=1e-14)
    assert norm == pytest.approx(0.95 * np.sqrt(2))
    # Round 2: g = [0.5, 0]; v = 0.9 [1, 1] + g = [1.4, 0.9]; step = -0.5 ([0.5, 0] + 0.9 v) = [-0.88, -0.405].
    opt.apply(theta, np.array([-0.45, 1.05]))
    np.testing.assert_allclose(theta, [-0.83, 0.645], rtol=1e-14)
    np.testing.assert_allclose(opt.state["velocity"], [1.4, 0.9], rtol=1e-14)
    assert int(opt.state["t"]) == 2


def test_heavy_ball_outer_sgd_and_none():
    theta = np.array([1.0])
    opt = OuterOptimizer("sgd", lr=2.0, momentum=0.5, theta=theta)
    opt.apply(theta, np.array([0.5]))  # g = 0.5, v = 0.5, step -1.0
    opt.apply(theta, np.array([0.0]))  # g = 0.0, v = 0.25, step -0.5
    np.testing.assert_allclose(theta, [-0.5])
    plain = OuterOptimizer("none", 1.0, 0.0, theta)
    assert plain.apply(theta, np.array([2.5])) == pytest.approx(3.0) and theta[0] == 2.5
    with pytest.raises(ValueError, match="'adam'"):
        OuterOptimizer("adam", 1.0, 0.0, theta)


# ---- warm-up --------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["local-sgd", "async"])
def test_warmup_epochs_are_sync_steps_on_workers_times_batch(data, mode):
    X, y = data
    spec, theta0 = small_net("float64")
    kw = dict(epochs=2, seed=5, dtype="float64", l2=1e-3)
    plain_lr = dict(lr_scaling="none", lr_warmup_epochs=0)
    # Two workers with 40 rows each per step: the single-process run with batches of 80.
    problem = Problem(spec, theta0, X, y)
    ref = fit(problem, TrainConfig(batch_size=80, **kw))
    warm, pool = fit_in_process(problem, TrainConfig(mode=mode, workers=2, batch_size=40, warmup_epochs=2,
                                                     sync_every=3, **plain_lr, **kw))
    assert rel_diff(warm.theta, ref.theta) < 1e-9
    np.testing.assert_allclose(warm.history["train/loss"], ref.history["train/loss"], rtol=1e-9)
    assert {m for _, m, _ in pool.log} == {"sync_grad"}
    # A third epoch switches to local rounds, and every trainer starts from the warm-up's optimizer state.
    longer, pool = fit_in_process(problem, TrainConfig(mode=mode, workers=2, batch_size=40, warmup_epochs=2,
                                                       sync_every=3, **plain_lr, **{**kw, "epochs": 3}))
    np.testing.assert_allclose(longer.history["train/loss"][:2], ref.history["train/loss"], rtol=1e-9)
    handed = [r for _, m, r in pool.log if m == "set_state"]
    assert len(handed) == 2 and any(m == "local_round" for _, m, _ in pool.log)


def test_default_sync_warmup_is_two_epochs_but_at_most_one_in_twenty():
    # Measured default (bench/bench_convergence.py): 2 sync epochs, never more than 5% of a run.
    assert TrainConfig(mode="local-sgd", epochs=40).sync_warmup_epochs() == 2
    assert TrainConfig(mode="async", epochs=100).sync_warmup_epochs() == 2
    assert TrainConfig(mode="async", epochs=39).sync_warmup_epochs() == 1
    assert TrainConfig(mode="local-sgd", epochs=19).sync_warmup_epochs() == 0
    assert TrainConfig(mode="local-sgd", epochs=5, warmup_epochs=3).sync_warmup_epochs() == 3
    assert TrainConfig(mode="local-sgd", epochs=40, warmup_epochs=0).sync_warmup_epochs() == 0
    assert TrainConfig(mode="sync", epochs=40).sync_warmup_epochs() == 0
    assert TrainConfig(mode="local-sgd", epochs=40).effective()["warmup_epochs"] == 2
    assert TrainConfig(mode="local-sgd").lr_warmup_epochs == 0


def test_default_warmup_runs_sync_steps_then_local_rounds(data):
    X, y = data
    spec, theta0 = small_net("float64")
    _, pool = fit_in_process(Problem(spec, theta0, X, y), TrainConfig(mode="local-sgd", workers=2, epochs=20,
                                                                      batch_size=40, sync_every=3, dtype="float64"))
    methods = [m for _, m, _ in pool.log if m != "set_state"]  # set_state: the warm-up's optimizer state handed on
    first_local = methods.index("local_round")
    assert set(methods[:first_local]) == {"sync_grad"}  # one warm-up epoch of 20: sync steps only
    assert first_local == 2 * -(-len(X) // 80)  # both trainers, every 80-row step of that epoch


# ---- async merging --------------------------------------------------------------------------
def test_staleness_weight_policies():
    assert staleness_weight(3, 99, "inverse") == pytest.approx(1 / 4)
    assert staleness_weight(0, 0, "inverse") == 1.0
    assert staleness_weight(2, 2, "downweight") == 1.0
    assert staleness_weight(5, 2, "downweight") == pytest.approx(1 / 4)
    assert staleness_weight(3, 2, "drop") == 0.0
    with pytest.raises(ValueError, match="'sometimes'"):
        staleness_weight(9, 2, "sometimes")


def test_inverse_staleness_scaling_is_applied_as_documented(data):
    X, y = data
    spec, theta0 = small_net("float64")
    cfg = TrainConfig(mode="async", workers=3, epochs=3, batch_size=30, sync_every=2, dtype="float64", seed=1,
                      staleness_policy="inverse", mixing=0.5, outer_optimizer="none")
    # Trainer 0 takes 3 time units a round, the others 1 and 1.3: arrivals interleave and staleness varies.
    out, pool = fit_in_process(Problem(spec, theta0, X, y), cfg, durations={0: 3.0, 1: 1.0, 2: 1.3})
    merges = out.info["merges"]
    assert {m["staleness"] for m in merges} >= {0, 1, 2, 3}
    for m in merges:
        assert m["weight"] == 1.0 / (1 + m["staleness"])
    np.testing.assert_allclose(out.theta, replay_async(pool, merges, theta0, 0.5), rtol=1e-12, atol=1e-15)


def test_outer_state_follows_merge_order_when_results_arrive_out_of_order(data, tmp_path):
    X, y = data
    spec, theta0 = small_net("float64")
    cfg = TrainConfig(mode="async", workers=3, epochs=2, batch_size=30, sync_every=2, dtype="float64", seed=1,
                      staleness_policy="inverse", outer_optimizer="nesterov", outer_lr=0.8, outer_momentum=0.6,
                      checkpoint_every=1, checkpoint_dir=str(tmp_path))
    out, pool = fit_in_process(Problem(spec, theta0, X, y), cfg, durations={0: 2.5, 1: 1.0, 2: 1.7})
    merges = out.info["merges"]
    sent = [tid for tid, m, _ in pool.log if m == "local_round"]
    assert [m["trainer"] for m in merges] != sent[: len(merges)]  # they did arrive out of dispatch order
    outer = OuterOptimizer("nesterov", 0.8, 0.6, theta0)
    np.testing.assert_allclose(out.theta, replay_async(pool, merges, theta0, 1.0, outer), rtol=1e-12, atol=1e-15)
    # The checkpoint holds the driver's outer state of that same merge.
    arrays, meta = checkpoint.load_latest(tmp_path)
    assert int(arrays["opt"]["t"]) == len(merges)
    np.testing.assert_allclose(arrays["opt"]["velocity"], outer.state["velocity"], rtol=1e-12, atol=1e-15)


def straggler_run(data, policy):
    X, y = data
    spec, theta0 = small_net("float32")
    cfg = TrainConfig(mode="async", epochs=2, batch_size=32, sync_every=2, dtype="float32", max_staleness=1,
                      staleness_policy=policy)
    # Trainer 0 takes ten time units a round, trainer 1 one.
    out, _ = fit_in_process(Problem(spec, theta0, np.tile(X, (4, 1)), np.tile(y, 4)), cfg, durations={0: 10.0, 1: 1.0})
    return out


def test_straggler_never_holds_the_fast_trainer_and_is_downweighted(data):
    out = straggler_run(data, "downweight")
    merges = out.info["merges"]
    fast = [i for i, m in enumerate(merges) if m["trainer"] == 1]
    slow = [i for i, m in enumerate(merges) if m["trainer"] == 0]
    assert len(fast) >= 30 and len(slow) >= 2
    # Nine or ten fast merges land between two slow ones, so every slow result is that many merges old.
    assert sum(slow[0] < i < slow[1] for i in fast) >= 9
    assert all(merges[i]["staleness"] >= 9 and merges[i]["weight"] == 1 / merges[i]["staleness"] for i in slow)


def test_straggler_results_beyond_max_staleness_are_dropped(data):
    out = straggler_run(data, "drop")
    assert [m["trainer"] for m in out.info["merges"]] == [1] * len(out.info["merges"])
    assert sum(out.history["dist/dropped"]) >= 2


def test_adam_at_mixing_1_late_run_loss_is_reproduced_and_fixed_by_staleness_scaling():
    Xtr, ytr, Xte, yte = digits()
    spec = NetworkSpec(64, (64,), ("relu",), 10, dtype="float32")
    theta0 = init_params(spec, 0)
    # Four Adam trainers with random round times (so staleness varies), the lr fixed (no scaling).
    kw = dict(mode="async", workers=4, epochs=40, batch_size=32, lr=0.01, dtype="float32", mixing=1.0,
              lr_scaling="none", lr_warmup_epochs=0, warmup_epochs=0, outer_optimizer="none")
    runs = {}
    for policy in ("downweight", "inverse"):  # the old default (full weight up to max_staleness=4), the new one
        cfg = TrainConfig(staleness_policy=policy, max_staleness=4, **kw)
        runs[policy], _ = fit_in_process(Problem(spec, theta0, Xtr, ytr, (Xte, yte)), cfg, jitter=1.0)
    old, new = runs["downweight"].history, runs["inverse"].history
    # Full-weight merges add up to four Adam steps: the last ten epochs sit at a much higher held-out loss
    # and a lower accuracy; 1 / (1 + staleness) brings both back.
    assert np.mean(old["val/loss"][-10:]) > 1.3 * np.mean(new["val/loss"][-10:])
    assert np.mean(new["val/accuracy"][-10:]) > np.mean(old["val/accuracy"][-10:])


# ---- learning rate, batch checks, the actor call --------------------------------------------
def test_lr_scaling_and_warmup_follow_the_worker_count():
    cfg = TrainConfig(mode="local-sgd", lr=0.01, lr_scaling="linear", lr_warmup_epochs=4, epochs=10)
    lr = epoch_lr(cfg, 8)
    assert [round(lr(e), 6) for e in range(5)] == [0.0275, 0.045, 0.0625, 0.08, 0.08]
    assert epoch_lr(TrainConfig(mode="async", lr=0.01, lr_scaling="sqrt", lr_warmup_epochs=0), 4)(0) == \
        pytest.approx(0.02)
    ramp = epoch_lr(TrainConfig(mode="async", lr=0.01, lr_warmup_epochs=2, lr_scaling="none"), 4)
    assert [ramp(0), ramp(1), ramp(2)] == pytest.approx([0.00625, 0.01, 0.01])
    assert epoch_lr(TrainConfig(mode="sync", lr=0.01, lr_scaling="linear"), 8)(0) == 0.01


def test_too_few_rows_per_worker_step_is_said_with_the_fix():
    msg = rows_per_step_warning(TrainConfig(mode="sync", batch_size=32), [200] * 8)
    assert "4 rows per step" in msg and "--batch-size 64" in msg and "local-sgd" in msg
    assert rows_per_step_warning(TrainConfig(mode="sync", batch_size=64), [200] * 8) is None
    assert "5 rows per step" in rows_per_step_warning(TrainConfig(mode="local-sgd", batch_size=32), [5, 6])
    with pytest.warns(UserWarning, match="--batch-size 128"):
        warn_small_steps(TrainConfig(mode="sync", batch_size=32, workers=16), [100] * 16)


def test_direct_actor_call_is_checked_against_this_distributed():
    lo, hi = (Version(v) for v in rpc.CHECKED_DISTRIBUTED)
    installed = Version(distributed.__version__)
    assert lo <= installed < hi, (f"distributed {installed} is outside {rpc.CHECKED_DISTRIBUTED}: re-check "
                                  f"Worker.actor_execute and widen CHECKED_DISTRIBUTED")
    assert rpc.direct_path_available()


@pytest.mark.parametrize("kw,match", [
    (dict(outer_optimizer="adam"), "'outer_optimizer'.*'adam'"),
    (dict(mode="local-sgd", outer_lr=0.0), "'outer_lr'.*0.0"),
    (dict(mode="local-sgd", outer_momentum=1.0), "'outer_momentum'.*1.0"),
    (dict(mode="local-sgd", outer_optimizer="nesterov", outer_momentum=0.0), "'outer_momentum'.*'sgd'"),
    (dict(mode="async", outer_optimizer="none", outer_lr=0.5), "'outer_lr'.*'none'.*0.5"),
    (dict(warmup_epochs=-1), "'warmup_epochs'.*-1"),
    (dict(lr_scaling="cubic"), "'lr_scaling'.*'cubic'"),
    (dict(lr_warmup_epochs=1.5), "'lr_warmup_epochs'.*1.5"),
    (dict(staleness_policy="sometimes"), "'staleness_policy'.*'sometimes'"),
])
def test_new_settings_are_validated_and_quote_the_bad_value(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_outer_defaults():
    assert TrainConfig(mode="local-sgd").effective()["outer_optimizer"] == "nesterov"
    assert TrainConfig(mode="local-sgd").outer_settings() == (1.0, 0.5)
    assert TrainConfig(mode="async").outer_name() == "none"  # measured: Nesterov hurt async (docs/benchmarks.md)
    with pytest.raises(ValueError, match="'outer_lr'"):  # an outer setting with no outer optimizer is refused
        TrainConfig(mode="async", outer_lr=0.5)
    assert TrainConfig(mode="sync").outer_name() == "none"
    assert TrainConfig(mode="async", outer_optimizer="sgd", outer_momentum=0.3).outer_settings() == (1.0, 0.3)


def test_local_sgd_logs_outer_step_and_consensus_per_round_and_per_epoch(data):
    X, y = data
    spec, theta0 = small_net("float64")
    cfg = TrainConfig(mode="local-sgd", workers=2, epochs=2, batch_size=30, sync_every=4, dtype="float64")
    out, _ = fit_in_process(Problem(spec, theta0, X, y), cfg)
    rounds = out.info["rounds_log"]
    assert len(rounds) == sum(out.history["dist/rounds"]) == 6  # 300 rows a shard, 10 steps an epoch, K=4
    for epoch in (0, 1):
        mine = [r for r in rounds if r["epoch"] == epoch]
        assert out.history["dist/outer_step_norm"][epoch] == pytest.approx(np.mean([r["outer_step_norm"] for r in mine]))
        assert out.history["dist/consensus_distance"][epoch] == pytest.approx(
            np.mean([r["consensus_distance"] for r in mine]))
        assert out.history["dist/consensus_distance_last"][epoch] == mine[-1]["consensus_distance"] > 0


def test_an_async_round_is_at_most_one_pass_over_the_shard(data):
    X, y = data
    spec, theta0 = small_net("float64")
    # 8 shards of 75 rows, batch 32: K=10 is capped at 3 steps, one pass (32 + 32 + 11 rows).
    cfg = TrainConfig(mode="async", workers=8, epochs=2, batch_size=32, sync_every=10, dtype="float64")
    _, pool = fit_in_process(Problem(spec, theta0, X, y), cfg)
    rows = [r[2] for _, m, r in pool.log if m == "local_round"]
    assert rows and set(rows) == {75}


# ---- round size chosen again from the first rounds ------------------------------------------------
def test_local_sgd_rounds_switch_to_the_retuned_size(data):
    """With ``retune``, rounds after the timed ones take the new ``sync_every``; the ones before keep the probe's."""
    from nnpipe.distributed import run_mode
    from nnpipe.distributed.reporter import Reporter
    from nnpipe.distributed.round_size import RETUNE_ROUNDS, RETUNE_SKIP
    from tests.distributed.fakes import InProcessPool

    X, y = data
    spec, theta0 = small_net("float64")
    cfg = TrainConfig(mode="local-sgd", workers=2, epochs=6, batch_size=8, sync_every=2, dtype="float64",
                      auto_round=True)
    pool = InProcessPool(X, y, spec, cfg, 2)
    theta = theta0.astype("float64")
    run_mode(pool, theta, cfg, Reporter(spec, cfg, None, (), cfg.mode), retune=True)
    info = pool.rule_info
    k = int(info["round/sync_every"])
    timed = RETUNE_SKIP + RETUNE_ROUNDS
    steps = [r["steps"] for r in info["rounds_log"]]
    assert steps[:timed] == [2] * timed
    # Later rounds take k steps, except an epoch's last round, which takes what is left of the pass.
    steps_per_epoch = -(-max(s.rows for s in pool.shards) // cfg.batch_size)
    assert all(s <= k for s in steps[timed:]) and k in steps[timed:]
    assert sum(steps) == cfg.epochs * steps_per_epoch


# ---- a worker that joins takes a trainer off a doubled-up survivor ---------------------------------
@pytest.mark.parametrize("mode", ["sync", "local-sgd"])
def test_a_moved_trainer_continues_its_stream_exactly(data, mode):
    """After a loss both trainers may share a survivor; a new worker takes one over with its state: same result."""
    from nnpipe.distributed import run_mode
    from nnpipe.distributed.reporter import Reporter
    from tests.distributed.fakes import InProcessPool

    X, y = data
    spec, theta0 = small_net("float64")
    cfg = TrainConfig(mode=mode, workers=2, epochs=4, batch_size=40, sync_every=3, dtype="float64", seed=4)

    def run(move: bool):
        pool = InProcessPool(X, y, spec, cfg, 2)

        def double_up(epoch, logs):
            if move and epoch == 1:  # as after a loss: trainer 1 rebuilt next to trainer 0; then a worker joins
                pool.lost.add(pool.trainers[1].address)
                pool.trainers[1].address = pool.trainers[0].address
                pool.workers.append("inproc://new")

        theta = theta0.astype("float64")
        run_mode(pool, theta, cfg, Reporter(spec, cfg, None, [double_up], cfg.mode))
        return theta, pool

    moved, pool = run(True)
    still, _ = run(False)
    events = [e for e in pool.events if e["event"] == "trainer_moved"]
    assert len(events) == 1 and events[0]["worker"] == "inproc://new"
    assert sorted(t.address for t in pool.trainers) == ["inproc://0", "inproc://new"]
    np.testing.assert_array_equal(moved, still)


# ---- the pool's written contract ------------------------------------------------------------------
def test_both_pools_fulfil_the_pool_protocol(data):
    """The Dask pool and the in-process pool have every member the Protocol names, with its parameters."""
    import inspect
    import typing

    from nnpipe.distributed.pool import TrainerPool
    from nnpipe.distributed.protocol import Pool
    from tests.distributed.fakes import InProcessPool

    X, y = data
    spec, _ = small_net("float64")
    pool = InProcessPool(X, y, spec, TrainConfig(mode="local-sgd", workers=2, epochs=1, batch_size=8), 2)
    methods = [n for n, v in vars(Pool).items() if inspect.isfunction(v) and not n.startswith("_")]
    assert len(methods) >= 15
    for name in methods:
        want = list(inspect.signature(getattr(Pool, name)).parameters)
        for cls in (TrainerPool, InProcessPool):
            assert list(inspect.signature(getattr(cls, name)).parameters) == want, (cls.__name__, name)
    for name in typing.get_type_hints(Pool, localns={"Shard": object, "Trainer": object}):
        assert hasattr(pool, name), name
    assert isinstance(pool.rule_info, dict)
