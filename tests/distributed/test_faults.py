"""Faults on a real cluster: a killed worker process, and checkpoints that resume a run."""

from __future__ import annotations

import os
import signal
import threading

import dask
import distributed
import numpy as np
import pytest

from nnpipe.checkpoint import latest_path
from nnpipe.config import TrainConfig
from nnpipe.core.problem import Problem
from nnpipe.core.training import fit
from nnpipe.distributed import fit_distributed, worker_addresses
from tests.distributed.helpers import local_cluster, rel_diff, small_net

pytestmark = pytest.mark.cluster


def kill_worker(client: distributed.Client, address: str) -> int:
    """SIGKILL the real process behind ``address`` (its nanny will start a fresh one)."""
    pid = client.run(os.getpid, workers=[address])[address]
    os.kill(pid, signal.SIGKILL)
    return pid


def mode_kw(mode: str) -> dict:
    """``local-sgd/overlap``: local-sgd with overlapped rounds (two queued per trainer)."""
    return dict(mode="local-sgd", overlap=2) if mode == "local-sgd/overlap" else dict(mode=mode)


@pytest.mark.parametrize("mode", ["sync", "local-sgd", "async", "local-sgd/overlap"])
def test_killed_worker_mid_training(data, mode, tmp_path):
    X, y = data
    spec, theta0 = small_net("float64")
    kw = dict(epochs=4, batch_size=60, seed=11, dtype="float64", lr=0.01)
    # Checkpoints every epoch: fetching trainer states after the kill must survive it too.
    ckpt = dict(checkpoint_every=1, checkpoint_dir=str(tmp_path))
    with local_cluster(2) as cluster, distributed.Client(cluster) as client:
        client.wait_for_workers(2)
        victim = worker_addresses(client)[0]  # shard 0 is placed on the first worker
        killed = []

        def kill_after_first_epoch(epoch, logs):
            if epoch == 0:
                killed.append(kill_worker(client, victim))

        out = fit_distributed(Problem(spec, theta0, X, y, (X, y)),
                              TrainConfig(**mode_kw(mode), workers=2, sync_every=3, **ckpt, **kw), client=client,
                              callbacks=[kill_after_first_epoch])
    assert killed
    events = out.info["events"]
    lost = [e for e in events if e["event"] == "worker_lost"]
    rebuilt = [e for e in events if e["event"] == "shard_rebuilt"]
    assert lost and lost[0]["worker"] == victim and lost[0]["shard"] == 0
    assert rebuilt and rebuilt[0]["shard"] == 0 and rebuilt[0]["worker"] != victim
    assert out.epochs_run == 4 and np.isfinite(out.theta).all()
    assert latest_path(tmp_path).name == "ckpt-000003.npz"
    # Noticed from the scheduler's word or a refused connection, never a 30 s connect timeout.
    assert "Timed out" not in lost[0]["error"]
    if mode == "sync":
        # The lost step is retried with the same parameters: nothing changes.
        ref = fit(Problem(spec, theta0, X, y), TrainConfig(**kw))
        assert rel_diff(out.theta, ref.theta) < 1e-9
    else:
        assert out.history["val/accuracy"][-1] > 0.6


def test_a_replacement_worker_takes_a_trainer_off_the_survivor(data):
    """The lost shard's trainer is rebuilt on the survivor at once; the worker that replaces the lost one
    (the nanny restarts it) then takes it over, so the run does not finish on one worker at half speed."""
    X, y = data
    spec, theta0 = small_net("float64")
    with local_cluster(2) as cluster, distributed.Client(cluster) as client:
        client.wait_for_workers(2)
        victim = worker_addresses(client)[0]

        def kill_then_wait_for_the_replacement(epoch, logs):
            if epoch == 0:
                kill_worker(client, victim)
            if epoch == 2:
                client.wait_for_workers(2, timeout=60)

        out = fit_distributed(Problem(spec, theta0, X, y),
                              TrainConfig(mode="local-sgd", workers=2, epochs=6, batch_size=60, sync_every=3,
                                          seed=11, dtype="float64", lr=0.01),
                              client=client, callbacks=[kill_then_wait_for_the_replacement])
    events = out.info["events"]
    rebuilt = [e for e in events if e["event"] == "shard_rebuilt"]
    moved = [e for e in events if e["event"] == "trainer_moved"]
    assert rebuilt and moved, events
    survivor = rebuilt[0]["worker"]
    assert moved[0]["from_worker"] == survivor and moved[0]["worker"] not in (victim, survivor)
    assert out.epochs_run == 6 and np.isfinite(out.theta).all()


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("mode", ["sync", "local-sgd", "local-sgd/overlap"])
def test_resume_from_checkpoint_matches_uninterrupted_run(client, data, tmp_path, mode):
    X, y = data
    spec, theta0 = small_net("float64")
    kw = dict(**mode_kw(mode), epochs=5, batch_size=40, seed=4, dtype="float64", sync_every=3, checkpoint_every=1)
    problem = Problem(spec, theta0, X, y)
    whole = fit_distributed(problem, TrainConfig(checkpoint_dir=str(tmp_path / "a"), **kw), client=client)

    def crash(epoch, logs):
        if epoch == 2:
            raise Interrupt(f"simulated crash after epoch {epoch}")

    cfg = TrainConfig(checkpoint_dir=str(tmp_path / "b"), **kw)
    with pytest.raises(Interrupt):
        fit_distributed(problem, cfg, client=client, callbacks=[crash])
    assert latest_path(tmp_path / "b").name == "ckpt-000002.npz"
    resumed = fit_distributed(problem, cfg, client=client)
    assert resumed.info["resumed_from"].endswith("ckpt-000002.npz")
    assert len(resumed.history["train/loss"]) == 5
    # Sync is exact by construction; local-sgd restores every trainer's optimizer
    # state and stream position too, so it resumes exactly as well.
    assert rel_diff(resumed.theta, whole.theta) < 1e-9
    np.testing.assert_allclose(resumed.history["train/loss"], whole.history["train/loss"], rtol=1e-9)


def test_checkpoint_from_another_mode_is_refused(client, data, tmp_path):
    X, y = data
    spec, theta0 = small_net("float64")
    problem = Problem(spec, theta0, X, y)
    fit_distributed(problem, TrainConfig(mode="sync", epochs=1, checkpoint_every=1, checkpoint_dir=str(tmp_path),
                                         dtype="float64"), client=client)
    with pytest.raises(ValueError, match="mode 'sync'"):
        fit_distributed(problem, TrainConfig(mode="local-sgd", epochs=2, checkpoint_every=1,
                                             checkpoint_dir=str(tmp_path), dtype="float64"), client=client)


def test_losing_the_last_worker_stops_the_run_with_a_resume_hint(data):
    # async, the mode with the most calls in flight; every mode rebuilds through the same pool.replace.
    X, y = data
    spec, theta0 = small_net("float64")
    cfg = TrainConfig(mode="async", workers=1, epochs=50, batch_size=60, dtype="float64", sync_every=3,
                      warmup_epochs=0)
    with local_cluster(1) as cluster, distributed.Client(cluster) as client:
        client.wait_for_workers(1)

        def remove_every_worker(epoch, logs):
            if epoch == 0:
                cluster.scale(0)  # the nanny goes too: nothing comes back
                while worker_addresses(client):
                    pass

        with pytest.raises(RuntimeError, match=r"no live Dask workers left: lost tcp://\S+ .*--resume-from"):
            fit_distributed(Problem(spec, theta0, X, y), cfg, client=client, callbacks=[remove_every_worker])


def test_a_client_handed_over_before_its_workers_register_waits_for_them(data):
    X, y = data
    spec, theta0 = small_net("float32")
    cfg = TrainConfig(mode="local-sgd", workers=2, epochs=2, batch_size=32, dtype="float32")
    with local_cluster(0) as cluster, distributed.Client(cluster) as client:
        threading.Timer(1.0, cluster.scale, args=(2,)).start()
        out = fit_distributed(Problem(spec, theta0, X, y), cfg, client=client)
    assert out.info["workers"] == 2 and len({s["shard"] for s in out.info["shards"]}) == 2


def test_losing_the_scheduler_stops_the_run_with_a_resume_hint(data):
    from nnpipe.distributed.watch import SchedulerLost

    X, y = data
    spec, theta0 = small_net("float64")
    cfg = TrainConfig(mode="local-sgd", workers=2, epochs=500, batch_size=60, dtype="float64", sync_every=3,
                      warmup_epochs=0)
    # A short reconnect window keeps the teardown of a cluster without a scheduler quick.
    with dask.config.set({"distributed.comm.timeouts.connect": "3s"}), local_cluster(2) as cluster, \
            distributed.Client(cluster) as client:
        client.wait_for_workers(2)

        def close_scheduler(epoch, logs):
            if epoch == 1:
                try:  # the scheduler takes its workers down with it
                    cluster.sync(cluster.scheduler.close)
                except RuntimeError:  # its own executor may already be shut
                    pass

        with pytest.raises(SchedulerLost, match=r"lost the Dask scheduler at tcp://\S+ .*--resume-from"):
            fit_distributed(Problem(spec, theta0, X, y), cfg, client=client, callbacks=[close_scheduler])


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_worker_killed_while_the_trainers_are_placed(data, mode):
    """The trainers start on a worker the driver still lists but that was just SIGKILLed: the lost worker's
    trainer starts on a live one at once, where before it waited for the dead worker until a 120 s timeout."""
    from nnpipe.distributed import train_on_shards
    from nnpipe.distributed.shards import place_shards

    X, y = data
    spec, theta0 = small_net("float64")
    cfg = TrainConfig(mode=mode, workers=2, epochs=3, batch_size=60, seed=3, dtype="float64", sync_every=3,
                      warmup_epochs=0)
    with local_cluster(2) as cluster, distributed.Client(cluster) as client:
        client.wait_for_workers(2)
        addresses = worker_addresses(client)
        shards = place_shards(client, X, y, addresses)
        kill_worker(client, addresses[0])  # the list handed on below is now stale
        out = train_on_shards(client, shards, spec, theta0, cfg, addresses=addresses)
        for s in shards:
            s.future.release()
    events = out.info["events"]
    lost = [e for e in events if e["event"] == "worker_lost"]
    rebuilt = [e for e in events if e["event"] == "shard_rebuilt"]
    assert lost and lost[0]["worker"] == addresses[0] and lost[0]["shard"] == 0, events
    assert rebuilt and rebuilt[0]["shard"] == 0 and rebuilt[0]["worker"] != addresses[0], events
    assert out.epochs_run == 3 and np.isfinite(out.theta).all()


def test_a_worker_killed_before_the_round_size_is_measured(data):
    """A large source measures a round before placing shards: a worker lost then is measured without, not waited for."""
    from nnpipe.distributed.frames import auto_round

    spec, _ = small_net("float64")
    cfg = TrainConfig(mode="local-sgd", workers=2, auto_round=True, dtype="float64")
    with local_cluster(2) as cluster, distributed.Client(cluster) as client:
        client.wait_for_workers(2)
        addresses = worker_addresses(client)
        kill_worker(client, addresses[0])  # the list handed on below is now stale
        chosen, facts = auto_round(client, cfg, spec, addresses, n_train=600)
    assert chosen.sync_every >= 1 and chosen.batch_size >= 1
    assert facts["round/rtt_s"] > 0 and facts["round/row_s"] > 0
