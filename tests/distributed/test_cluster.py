"""Getting a cluster: a hand-started one, the environment variable, a local one, and the Keras front."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import distributed
import pytest

from nnpipe.config import TrainConfig
from nnpipe.core.problem import Problem
from nnpipe.distributed import connect, fit_distributed
from nnpipe.keras import Dense, Sequential
from tests.distributed.helpers import small_net

pytestmark = pytest.mark.cluster

from nnpipe.deploy.stack import free_port  # noqa: E402

DASK = str(Path(sys.executable).with_name("dask"))


@pytest.fixture
def hand_started_cluster(tmp_path):
    """``dask scheduler`` plus two ``dask worker`` processes on 127.0.0.1, as a user would start them."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    logs = [open(tmp_path / f"{name}.log", "w") for name in ("scheduler", "worker0", "worker1")]
    procs = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", f"127.0.0.1:{free_port()}"],
                              stdout=logs[0], stderr=subprocess.STDOUT, env=env)]
    try:
        for i in (1, 2):
            procs.append(subprocess.Popen([DASK, "worker", address, "--nthreads", "1", "--host", "127.0.0.1",
                                           "--no-dashboard", "--name", f"w{i}"],
                                          stdout=logs[i], stderr=subprocess.STDOUT, env=env))
        with distributed.Client(address, timeout=60) as c:
            c.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        for f in logs:
            f.close()


def test_train_against_hand_started_cluster(hand_started_cluster, data, monkeypatch):
    X, y = data
    spec, theta0 = small_net("float32")
    cfg = TrainConfig(mode="local-sgd", workers=2, sync_every=5, batch_size=32, epochs=3, lr=0.01, dtype="float32")
    out = fit_distributed(Problem(spec, theta0, X, y, (X, y)), cfg, address=hand_started_cluster)
    assert out.info["address"] == hand_started_cluster
    assert out.history["val/accuracy"][-1] > 0.6
    # The same cluster through the environment, as a deployment would configure it.
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", hand_started_cluster)
    out = fit_distributed(Problem(spec, theta0, X, y), cfg.__class__(**{**cfg.to_dict(), "mode": "async"}))
    assert out.info["address"] == hand_started_cluster
    # It was left running: a new client still finds both workers.
    with distributed.Client(hand_started_cluster) as c:
        assert len(c.scheduler_info()["workers"]) == 2


def test_connect_starts_and_closes_a_local_cluster(monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with connect(workers=1) as client:
        info = client.scheduler_info()
        address = client.scheduler.address
        assert len(info["workers"]) == 1
        (worker,) = info["workers"].values()
        assert worker["nthreads"] == 1
        # BLAS pinned to one thread in the worker process.
        env = client.run(lambda: os.environ.get("OPENBLAS_NUM_THREADS"))
        assert set(env.values()) == {"1"}
        # Ctrl-C in a terminal reaches the worker processes too: they leave it to the driver (no tracebacks)
        ignored = client.run(lambda: __import__("signal").getsignal(2) == __import__("signal").SIG_IGN)
        assert set(ignored.values()) == {True}
    with pytest.raises((OSError, TimeoutError)):
        distributed.Client(address, timeout=2)


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_fit_without_a_cluster_starts_and_closes_its_own(client, data, monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    X, y = data
    spec, theta0 = small_net("float32")
    logger, records = logging.getLogger("nnpipe.distributed"), Records()
    logger.addHandler(records)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        out = fit_distributed(Problem(spec, theta0, X, y),
                              TrainConfig(mode="sync", workers=2, epochs=1, batch_size=100))
    finally:
        logger.removeHandler(records)
        logger.setLevel(old_level)
    address = out.info["address"]
    assert address != client.scheduler.address and out.info["workers"] == 2
    assert any("dashboard" in m and address in m for m in records.messages), records.messages
    with pytest.raises((OSError, TimeoutError)):
        distributed.Client(address, timeout=2)


def test_connect_leaves_a_given_client_open(client):
    with connect(client=client) as c:
        assert c is client
    assert client.status == "running"


def test_keras_fit_local_sgd_on_the_cluster(client, data):
    X, y = data
    model = Sequential([Dense(16, activation="relu", input_dim=8), Dense(3, activation="softmax")], seed=0)
    model.compile(loss="sparse_categorical_crossentropy", optimizer="adam", metrics=["accuracy"],
                  learning_rate=0.01)
    hist = model.fit(X, y, epochs=4, batch_size=32, verbose=0, validation_split=0.2,
                     mode="local-sgd", workers=2, sync_every=5, client=client)
    assert len(hist.history["loss"]) == 4 and hist.history["loss"][-1] < hist.history["loss"][0]
    loss, acc = model.evaluate(X, y)
    assert acc > 0.6
