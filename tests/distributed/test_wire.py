"""Bytes on the wire and the time to a target, in every distributed mode, in memory and streamed."""

from __future__ import annotations

import numpy as np
import pytest

import nnpipe
from nnpipe.config import TrainConfig
from nnpipe.core.problem import Problem
from nnpipe.distributed import fit_distributed
from nnpipe.distributed.wire import link_seconds
from nnpipe.sources import open_source
from nnpipe.sources.prep import prepare
from nnpipe.distributed.frames import cluster_runner
from tests.distributed.helpers import small_net
from tests.distributed.test_frames import parts, table  # noqa: F401  (fixtures)

pytestmark = pytest.mark.cluster

# Per message: Dask's header, the pickled call (method, actor key) and frame lengths: ~0.5 kB on this
# machine. The bound leaves room for a reply's loss and row counts, never for a second copy of theta.
OVERHEAD = 2000


def test_sync_bytes_per_epoch_are_parameters_times_rounds(client, data):
    X, y = data
    spec, theta0 = small_net("float64")
    P = theta0.nbytes
    out = fit_distributed(Problem(spec, theta0, X, y), TrainConfig(mode="sync", workers=2, epochs=2, batch_size=100,
                                                                  dtype="float64"), client=client)
    calls = 2 * 600 // 100  # each of the epoch's 6 steps calls both trainers: theta out, a gradient back
    assert out.info["rounds"] == 2 * 6 and out.info["wire_measured"]
    for key in ("dist/bytes_sent", "dist/bytes_received"):
        per_epoch = out.history[key]
        assert len(per_epoch) == 2
        for value in per_epoch:
            assert calls * P <= value <= calls * (P + OVERHEAD), (key, value, calls * P)
    info = out.info
    assert info["wire_bytes_sent_per_epoch"] == np.mean(out.history["dist/bytes_sent"])
    assert info["wire_bytes_sent"] >= sum(out.history["dist/bytes_sent"])  # plus the calls outside the epochs
    assert info["wire_s_per_epoch_1gbit"] == link_seconds(info["wire_bytes_sent_per_epoch"],
                                                          info["wire_bytes_received_per_epoch"])


@pytest.mark.parametrize("mode", ["local-sgd", "async"])
def test_target_and_bytes_in_the_round_modes(client, data, mode):
    X, y = data
    spec, theta0 = small_net("float32")
    P = theta0.nbytes
    cfg = TrainConfig(mode=mode, workers=2, epochs=30, batch_size=20, sync_every=5, lr=0.01, seed=1, warmup_epochs=0,
                      until="val/accuracy>=0.6")
    out = fit_distributed(Problem(spec, theta0, X[:500], y[:500], (X[500:], y[500:])), cfg, client=client)
    rec = out.info["target"]
    assert rec["reached"] and out.epochs_run == rec["epochs"] < 30 and out.stopped_early
    assert out.history["val/accuracy"][-1] >= 0.6 and rec["seconds"] > 0
    # Every epoch sends parameters out and gets parameters back: at least one copy per trainer call.
    per_call = "dist/rounds" if mode == "local-sgd" else "dist/merges"
    for sent, received, n in zip(out.history["dist/bytes_sent"], out.history["dist/bytes_received"],
                                 out.history[per_call]):
        calls = 2 * n if mode == "local-sgd" else n
        assert P * calls <= received <= (P + OVERHEAD) * calls + (P + OVERHEAD) * 2, (received, n)
        assert sent >= P * max(calls - 2, 1)  # async: a merge's reply may have gone out in the epoch before


def test_streamed_source_records_target_and_bytes(client, parts):  # noqa: F811
    prepared = prepare(open_source(str(parts), "label", block_bytes=1), cluster_runner(client), seed=0)
    cfg = TrainConfig(mode="local-sgd", workers=2, epochs=3, batch_size=32, sync_every=4, stream=True,
                      until="val/accuracy>=0.99", stop_at_target=False)
    out = nnpipe.train(prepared, cfg, hidden=(16,), client=client)
    assert out.info["data_path"] == "streaming" and out.epochs_run == 3
    rec = out.info["target"]
    assert rec["reached"] is False and rec["best"] == max(out.history["val/accuracy"])
    assert all(v > 0 for v in out.history["dist/bytes_sent"]) and out.info["wire_measured"]
