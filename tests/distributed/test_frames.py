"""Training from a CSV/Parquet source read by the workers, never gathered on the driver."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nnpipe.config import TrainConfig
from nnpipe.distributed import worker_addresses
from nnpipe.distributed.frames import fit_source, read_source
from nnpipe.network import init_params
from nnpipe.targets import encode_labels
from nnpipe.training import fit
from tests.distributed.helpers import rel_diff

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def source(tmp_path_factory, data):
    X, y = data
    X, y = np.tile(X, (5, 1)) + 0.01 * np.arange(5).repeat(len(X))[:, None], np.tile(y, 5)  # 3000 rows
    df = pd.DataFrame(X * 3.0 + 1.0, columns=[f"f{i}" for i in range(X.shape[1])])
    df["label"] = np.array(["cat", "dog", "emu"])[y]
    d = tmp_path_factory.mktemp("src")
    df.to_csv(d / "train.csv", index=False)
    df.to_parquet(d / "train.parquet")
    return d, df


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


def test_csv_source_sync_equals_in_memory_training(client, source):
    d, df = source
    cfg = TrainConfig(mode="sync", workers=2, epochs=3, batch_size=100, seed=9, dtype="float64", lr=0.01)
    assert read_source(d / "train.csv", 100_000).npartitions >= 3  # shards straddle partitions
    before, _ = outgoing_to_non_workers(client)
    out = fit_source(d / "train.csv", "label", cfg, hidden=(16,), client=client, blocksize=100_000)
    after, keys = outgoing_to_non_workers(client)
    # The statistics match the whole file's, computed on the cluster.
    feats = df.drop(columns="label").to_numpy()
    np.testing.assert_allclose(out.mean, feats.mean(0), rtol=1e-12)
    np.testing.assert_allclose(out.scale, feats.std(0), rtol=1e-12)
    assert out.classes.tolist() == ["cat", "dog", "emu"] and out.n_rows == len(df)
    # Same rows, same order, same scaling: equal to single-process training in memory.
    Xs = (feats - out.mean) / out.scale
    ref = fit(out.spec, init_params(out.spec, cfg.seed), Xs, encode_labels(df["label"].to_numpy(), out.classes),
              TrainConfig(epochs=3, batch_size=100, seed=9, dtype="float64", lr=0.01))
    assert rel_diff(out.result.theta, ref.theta) < 1e-9
    # The rows never went to the driver: no shard or partition was gathered, and
    # what the driver did receive (statistics) is a small fraction of the data.
    # (Trainer keys show up as zero-byte actor handles, which is fine.)
    assert not [k for k in keys if str(k).startswith("nnpipe-frame-shard") or "read" in str(k)]
    assert after - before < 0.05 * feats.nbytes


def test_parquet_source_local_sgd_with_validation(client, source):
    d, df = source
    cfg = TrainConfig(mode="local-sgd", workers=2, epochs=4, batch_size=32, sync_every=4, lr=0.01)
    raw = df.drop(columns="label").to_numpy()
    out = fit_source(d / "train.parquet", "label", cfg, hidden=(16,), client=client,
                     validation=(raw[:500], df["label"].to_numpy()[:500]))
    assert out.features == [f"f{i}" for i in range(8)]
    assert out.result.history["val/accuracy"][-1] > 0.6
    assert out.result.info["source"].endswith("train.parquet")


def test_missing_target_column_is_named(client, source):
    d, _ = source
    with pytest.raises(ValueError, match="'species'.*columns are"):
        fit_source(d / "train.csv", "species", TrainConfig(mode="sync"), client=client)
