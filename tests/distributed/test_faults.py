"""Faults on a real cluster: a killed worker process, and checkpoints that resume a run."""

from __future__ import annotations

import os
import signal

import distributed
import numpy as np
import pytest

from nnpipe.config import TrainConfig
from nnpipe.distributed import fit_distributed, worker_addresses
from nnpipe.checkpoint import latest_path
from nnpipe.training import fit
from tests.distributed.helpers import local_cluster, rel_diff, small_net

pytestmark = pytest.mark.cluster


def kill_worker(client: distributed.Client, address: str) -> int:
    """SIGKILL the real process behind ``address`` (its nanny will start a fresh one)."""
    pid = client.run(os.getpid, workers=[address])[address]
    os.kill(pid, signal.SIGKILL)
    return pid


@pytest.mark.parametrize("mode", ["sync", "local-sgd", "async"])
def test_killed_worker_mid_training(data, mode):
    X, y = data
    spec, theta0 = small_net("float64")
    kw = dict(epochs=4, batch_size=60, seed=11, dtype="float64", lr=0.01)
    with local_cluster(2) as cluster, distributed.Client(cluster) as client:
        client.wait_for_workers(2)
        victim = worker_addresses(client)[0]  # shard 0 is placed on the first worker
        killed = []

        def kill_after_first_epoch(epoch, logs):
            if epoch == 0:
                killed.append(kill_worker(client, victim))

        out = fit_distributed(spec, theta0, X, y, TrainConfig(mode=mode, workers=2, sync_every=3, **kw),
                              client=client, callbacks=[kill_after_first_epoch], validation=(X, y))
    assert killed
    events = out.info["events"]
    lost = [e for e in events if e["event"] == "worker_lost"]
    rebuilt = [e for e in events if e["event"] == "shard_rebuilt"]
    assert lost and lost[0]["worker"] == victim and lost[0]["shard"] == 0
    assert rebuilt and rebuilt[0]["shard"] == 0 and rebuilt[0]["worker"] != victim
    assert out.epochs_run == 4 and np.isfinite(out.theta).all()
    if mode == "sync":
        # The lost step is retried with the same parameters: nothing changes.
        ref = fit(spec, theta0, X, y, TrainConfig(**kw))
        assert rel_diff(out.theta, ref.theta) < 1e-9
    else:
        assert out.history["val/accuracy"][-1] > 0.6


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("mode", ["sync", "local-sgd"])
def test_resume_from_checkpoint_matches_uninterrupted_run(client, data, tmp_path, mode):
    X, y = data
    spec, theta0 = small_net("float64")
    kw = dict(mode=mode, epochs=5, batch_size=40, seed=4, dtype="float64", sync_every=3, checkpoint_every=1)
    whole = fit_distributed(spec, theta0, X, y, TrainConfig(checkpoint_dir=str(tmp_path / "a"), **kw), client=client)

    def crash(epoch, logs):
        if epoch == 2:
            raise Interrupt(f"simulated crash after epoch {epoch}")

    cfg = TrainConfig(checkpoint_dir=str(tmp_path / "b"), **kw)
    with pytest.raises(Interrupt):
        fit_distributed(spec, theta0, X, y, cfg, client=client, callbacks=[crash])
    assert latest_path(tmp_path / "b").name == "ckpt-000002.npz"
    resumed = fit_distributed(spec, theta0, X, y, cfg, client=client)
    assert resumed.info["resumed_from"].endswith("ckpt-000002.npz")
    assert len(resumed.history["train/loss"]) == 5
    # Sync is exact by construction; local-sgd restores every trainer's optimizer
    # state and stream position too, so it resumes exactly as well.
    assert rel_diff(resumed.theta, whole.theta) < 1e-9
    np.testing.assert_allclose(resumed.history["train/loss"], whole.history["train/loss"], rtol=1e-9)


def test_checkpoint_from_another_mode_is_refused(client, data, tmp_path):
    X, y = data
    spec, theta0 = small_net("float64")
    fit_distributed(spec, theta0, X, y, TrainConfig(mode="sync", epochs=1, checkpoint_every=1,
                                                    checkpoint_dir=str(tmp_path), dtype="float64"), client=client)
    with pytest.raises(ValueError, match="mode 'sync'"):
        fit_distributed(spec, theta0, X, y, TrainConfig(mode="local-sgd", epochs=2, checkpoint_every=1,
                                                        checkpoint_dir=str(tmp_path), dtype="float64"),
                        client=client)
