"""``sync`` mode equals single-process training on the same global batches."""

from __future__ import annotations

import numpy as np
import pytest

from nnpipe.config import TrainConfig
from nnpipe.core.problem import Problem
from nnpipe.core.training import fit
from nnpipe.distributed import fit_distributed
from nnpipe.results import DivergenceError
from tests.distributed.helpers import rel_diff, small_net

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("optimizer,l2,clip", [("adam", 0.0, None), ("momentum", 1e-3, 0.5)])
def test_sync_two_workers_equals_single_process(client, data, optimizer, l2, clip):
    X, y = data
    spec, theta0 = small_net("float64")
    kw = dict(optimizer=optimizer, epochs=3, batch_size=50, seed=7, dtype="float64", l2=l2, clip_norm=clip)
    problem = Problem(spec, theta0, X, y)
    ref = fit(problem, TrainConfig(**kw))
    out = fit_distributed(problem, TrainConfig(mode="sync", workers=2, **kw), client=client)
    assert rel_diff(out.theta, ref.theta) < 1e-9
    assert rel_diff(out.theta, theta0) > 1e-3  # it did train
    np.testing.assert_allclose(out.history["train/loss"], ref.history["train/loss"], rtol=1e-9)
    assert out.info["mode"] == "sync" and out.info["workers"] == 2
    assert out.info["address"] == client.scheduler.address
    assert out.info["events"] == []


def test_sync_logs_and_traffic(client, data):
    X, y = data
    spec, theta0 = small_net("float32")
    seen = []
    out = fit_distributed(Problem(spec, theta0, X, y, (X[:100], y[:100])),
                          TrainConfig(mode="sync", epochs=2, batch_size=100, dtype="float32"),
                          callbacks=[lambda e, logs: seen.append((e, logs))], client=client)
    assert [e for e, _ in seen] == [0, 1]
    logs = seen[-1][1]
    for key in ("train/loss", "train/samples_per_s", "val/loss", "val/accuracy", "lr", "dist/straggler_wait_s",
                "worker/0/samples_per_s", "worker/1/samples_per_s"):
        assert key in logs and isinstance(logs[key], float), key
    # Parameters go out and gradients come back, in the training dtype; never data.
    assert out.info["bytes_sent_per_round"] == 2 * theta0.nbytes
    assert out.info["bytes_received_per_round"] <= 2 * theta0.nbytes
    assert out.theta.dtype == np.float32


def test_sync_divergence_names_step_and_worker(client, data):
    X, y = data
    spec, theta0 = small_net("float32")
    cfg = TrainConfig(mode="sync", optimizer="sgd", lr=1e25, epochs=2, batch_size=100, dtype="float32")
    with pytest.raises(DivergenceError, match=r"(worker|update).*epoch 0, step \d+"):
        fit_distributed(Problem(spec, theta0, X, y), cfg, client=client)
