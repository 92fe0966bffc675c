"""Large sources on a real cluster: the rows are read, split, scaled, sharded and evaluated on the workers."""

from __future__ import annotations

import dataclasses

import distributed
import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import StandardScaler

import nnpipe
from nnpipe.api import source_spec
from nnpipe.config import TrainConfig
from nnpipe.core.network import init_params
from nnpipe.core.problem import Problem
from nnpipe.distributed import fit_distributed, worker_addresses
from nnpipe.distributed.frames import cluster_runner, place_source_shards
from nnpipe.sources import open_source
from nnpipe.sources.prep import TRAIN, prepare, split_codes
from tests.distributed.helpers import local_cluster, rel_diff
from tests.distributed.test_faults import kill_worker

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def table(data):
    """3000 rows: 8 features, a row id and a string label."""
    X, y = data
    X = np.tile(X, (5, 1)) + 0.01 * np.arange(5).repeat(len(X))[:, None]
    df = pd.DataFrame(X * 3.0 + 1.0, columns=[f"f{i}" for i in range(X.shape[1])])
    df["rid"] = np.arange(len(df), dtype=np.float64)
    df["label"] = np.array(["cat", "dog", "emu"])[np.tile(y, 5)]
    return df


@pytest.fixture(scope="module")
def parts(tmp_path_factory, table):
    d = tmp_path_factory.mktemp("parts")
    for i in range(6):
        table.iloc[i * 500:(i + 1) * 500].to_parquet(d / f"part-{i}.parquet", row_group_size=100, index=False)
    return d


def train_rows(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    return df[split_codes(0, len(df), seed, 0.2, 0.1) == TRAIN]


def outgoing_to_non_workers(client) -> tuple[int, list]:
    """Bytes and keys the workers sent to anything but another worker (the driver, via gather)."""
    workers = set(worker_addresses(client))
    logs = client.run(lambda dask_worker: list(dask_worker.transfer_outgoing_log))
    total, keys = 0, []
    for log in logs.values():
        for entry in log:
            if entry["who"] not in workers:
                total += entry["total"]
                keys.extend(entry["keys"])
    return total, keys


def test_split_and_shards_same_for_any_workers_and_block_size(client, parts, table):
    """Shards hold the same training rows for 1, 2 and 3 shards and two block sizes (rows found by id)."""
    expect = train_rows(table, 5)["rid"].to_numpy()
    seen = []
    for block in (1, 10 << 20):  # one row group per piece, or one file per piece
        prepared = prepare(open_source(str(parts), "label", block_bytes=block), cluster_runner(client), seed=5)
        spec = source_spec(prepared, (4,), "relu", "float64")
        rid = prepared.source.features.index("rid")
        for n_shards in (1, 2, 3):
            addresses = (worker_addresses(client) * 2)[:n_shards]  # 3 shards: one worker holds two
            shards = place_source_shards(client, prepared, spec, addresses, stream=False)
            got = [s.future.result() for s in shards]  # gathered by the test only, to look at them
            ids = np.concatenate([np.rint(g["X"][:, rid] * prepared.scale[rid] + prepared.mean[rid]) for g in got])
            assert [len(g["X"]) for g in got] == [s.rows for s in shards]
            assert max(s.rows for s in shards) - min(s.rows for s in shards) <= 1  # balanced by rows
            np.testing.assert_array_equal(ids, expect)  # the same rows, in global order
            seen.append(prepared.counts.sum(axis=0).tolist())
            for s in shards:
                s.future.release()
    assert all(c == seen[0] for c in seen)


def test_statistics_on_the_cluster_equal_standard_scaler(client, parts, table):
    prepared = prepare(open_source(str(parts), "label", block_bytes=1), cluster_runner(client), seed=2)
    rows = train_rows(table, 2)[prepared.source.features].to_numpy()
    ref = StandardScaler().fit(rows)
    np.testing.assert_allclose(prepared.mean, ref.mean_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(prepared.scale, ref.scale_, rtol=1e-9)
    assert prepared.classes.tolist() == ["cat", "dog", "emu"] and prepared.n_rows == len(table)


def test_csv_glob_on_the_cluster_and_a_bad_value(client, tmp_path, table):
    """CSV blocks read on the workers give the statistics this process gets; a bad value names its file and row."""
    from nnpipe.data import DataError

    for i in range(3):
        table.iloc[i * 1000:(i + 1) * 1000].to_csv(tmp_path / f"t{i}.csv", index=False)
    src = open_source(str(tmp_path / "t*.csv"), "label", block_bytes=20_000)
    assert len(src.pieces) > 6  # each file cut into byte blocks
    on_cluster = prepare(src, cluster_runner(client), seed=4)
    here = prepare(src, seed=4)
    np.testing.assert_allclose(on_cluster.mean, here.mean, rtol=1e-12)
    np.testing.assert_array_equal(on_cluster.counts, here.counts)
    bad = table.iloc[1000:2000].copy()
    bad["f3"] = bad["f3"].astype(object)
    bad.iloc[700, 3] = "x7"
    bad.to_csv(tmp_path / "t1.csv", index=False)
    with pytest.raises(DataError, match=r"t1\.csv: column 'f3' row 701 \(line 702\): value 'x7' is not a number"):
        prepare(open_source(str(tmp_path / "t*.csv"), "label", block_bytes=20_000), cluster_runner(client))


def test_sync_on_a_source_equals_sync_in_memory(client, parts, table):
    cfg = TrainConfig(mode="sync", workers=2, epochs=3, batch_size=100, seed=9, dtype="float64", lr=0.01,
                      stream=False)
    before, old_keys = outgoing_to_non_workers(client)
    prepared = prepare(open_source(str(parts), "label", block_bytes=1), cluster_runner(client), seed=9)
    out = nnpipe.train(prepared, cfg, hidden=(16,), client=client)
    after, keys = outgoing_to_non_workers(client)
    assert out.info["data_path"] == "in-memory"
    rows = train_rows(table, 9)
    model = out.model
    X = model.transform(rows[prepared.source.features].to_numpy())
    theta0 = init_params(model.spec, np.random.default_rng(np.random.SeedSequence(9).spawn(1)[0]))
    ref = fit_distributed(Problem(model.spec, theta0, X, model.encode_targets(rows["label"].to_numpy())), cfg,
                          client=client)
    assert rel_diff(out.theta, ref.theta) < 1e-9
    # No shard or piece went to the driver; what it received (statistics, sums) is small.
    assert not [k for k in set(keys) - set(old_keys) if "source-shard" in str(k)]
    # What it did receive is a summary per piece (18 here) and sums per epoch: a fixed cost, not per row.
    assert after - before < 0.25 * len(table) * 9 * 8
    assert out.history["val/accuracy"][-1] > 0.5


def test_streaming_sync_full_batch_equals_in_memory_and_is_reproducible(client, parts):
    """Streamed shards walk their pieces in a shuffled block order, so minibatches differ from the in-memory
    order; a full-batch step does not depend on the order, so there the two agree to rounding."""
    prepared = prepare(open_source(str(parts), "label", block_bytes=1), cluster_runner(client), seed=1)
    full = TrainConfig(mode="sync", workers=2, epochs=3, batch_size=10_000, seed=1, dtype="float64", lr=0.05)
    mem = nnpipe.train(prepared, dataclasses.replace(full, stream=False), hidden=(16,), client=client)
    streamed = nnpipe.train(prepared, dataclasses.replace(full, stream=True), hidden=(16,), client=client)
    assert mem.info["data_path"] == "in-memory" and streamed.info["data_path"] == "streaming"
    assert rel_diff(streamed.theta, mem.theta) < 1e-9
    mini = TrainConfig(mode="sync", workers=2, epochs=2, batch_size=64, seed=1, dtype="float64", stream=True)
    a = nnpipe.train(prepared, mini, hidden=(16,), client=client)
    b = nnpipe.train(prepared, mini, hidden=(16,), client=client)
    np.testing.assert_array_equal(a.theta, b.theta)


def test_local_sgd_streams_with_a_tiny_budget(client, parts):
    prepared = prepare(open_source(str(parts), "label", block_bytes=1), cluster_runner(client), seed=0)
    cfg = TrainConfig(mode="local-sgd", workers=2, epochs=4, batch_size=32, sync_every=4, memory_share=1e-9)
    out = nnpipe.train(prepared, cfg, hidden=(16,), client=client)
    assert out.info["data_path"] == "streaming" and out.info["memory_budget"] < out.info["shard_bytes"]
    assert out.history["val/accuracy"][-1] > 0.6


def test_auto_round_is_chosen_and_explicit_values_win(client, parts):
    prepared = prepare(open_source(str(parts), "label"), cluster_runner(client), seed=0)
    auto = nnpipe.train(prepared, TrainConfig(mode="local-sgd", workers=2, epochs=2, auto_round=True),
                        hidden=(8,), client=client)
    assert auto.info["batch_size"] == 256 and "round/rtt_s" in auto.info and auto.info["sync_every"] >= 1
    # Chosen again from the first rounds' own times; the run reports the size it ended with.
    assert "round/measured_idle_s" in auto.info and auto.info["sync_every"] == auto.info["round/sync_every"]
    fixed = nnpipe.train(prepared, TrainConfig(mode="local-sgd", workers=2, epochs=1, batch_size=16, sync_every=3),
                         hidden=(8,), client=client)
    assert fixed.info["batch_size"] == 16 and fixed.info["sync_every"] == 3 and "round/rtt_s" not in fixed.info


def test_killed_worker_during_a_source_run(parts, table):
    """A worker dies after the first epoch of a streamed sync run: its shard is rebuilt, the run finishes and
    equals a run nobody killed (sync retries the lost step with the same parameters)."""
    cfg = TrainConfig(mode="sync", workers=2, epochs=3, batch_size=100, seed=3, dtype="float64", stream=True)
    with local_cluster(2) as cluster, distributed.Client(cluster) as c:
        c.wait_for_workers(2)
        prepared = prepare(open_source(str(parts), "label", block_bytes=1), cluster_runner(c), seed=3)
        victim = worker_addresses(c)[0]
        killed = []

        def kill_after_first_epoch(epoch, logs):
            if epoch == 0:
                killed.append(kill_worker(c, victim))

        out = nnpipe.train(prepared, cfg, hidden=(16,), client=c, callbacks=[kill_after_first_epoch])
        ref = nnpipe.train(prepared, cfg, hidden=(16,), client=c)
    assert killed and out.epochs_run == 3
    assert any(e["event"] == "shard_rebuilt" for e in out.info["events"])
    assert rel_diff(out.theta, ref.theta) < 1e-9
