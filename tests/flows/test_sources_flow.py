"""``nnpipe train`` on large sources (a directory of Parquet parts, a CSV glob) on a scratch SQLite store."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from nnpipe.sources import open_source
from nnpipe.sources.prep import TEST, split_codes

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("prefect_harness")]
runner = CliRunner()


def table(n: int = 2400) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, 4))
    df = pd.DataFrame(X * [1, 2, 3, 4] + 1, columns=["a", "b", "c", "d"])
    df["label"] = np.where(X[:, 0] - X[:, 1] > 0, "up", "down")
    return df


def write_parts(df: pd.DataFrame, root: Path) -> list[Path]:
    """Six Parquet parts in hive folders ``day=0`` and ``day=1``, in global order."""
    files = []
    for i in range(6):
        d = root / f"day={i // 3}"
        d.mkdir(parents=True, exist_ok=True)
        files.append(d / f"part-{i}.parquet")
        df.iloc[i * 400:(i + 1) * 400].to_parquet(files[-1], row_group_size=100, index=False)
    return files


@pytest.fixture
def store(tmp_path, monkeypatch):
    from nnpipe import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("NNPIPE_PREFECT_SERVER", "ephemeral")  # the session's test API, no local server left behind
    monkeypatch.chdir(tmp_path)
    yield uri
    tracking.reset()
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(key, None)


def train(*args: str):
    from nnpipe.cli import app

    return runner.invoke(app, ["train", *args])


def runs(uri: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exps = [e for e in client.search_experiments() if e.name != "nnpipe-registry-history"]  # not the alias ledger
    return client, [r for e in exps for r in client.search_runs([e.experiment_id])]


def test_parquet_directory_trains_registers_and_serves_raw_rows(tmp_path, store):
    import mlflow

    df = table()
    files = write_parts(df, tmp_path / "lake")
    done = train("--dataset", str(tmp_path / "lake"), "--target", "label", "--mode", "local-sgd", "--workers", "2",
                 "--epochs", "4", "--hidden", "16", "--batch-size", "32", "--sync-every", "4")
    assert done.exit_code == 0, done.output
    assert "nnpipe-lake version 1" in done.output and "promoted to champion" in done.output
    client, (run,) = runs(store)
    tags = run.data.tags
    assert tags["dataset.fingerprint"] == open_source(str(tmp_path / "lake"), "label").fingerprint
    assert tags["dataset.rows"] == str(len(df)) and tags["nnpipe.data_path"] == "in-memory"
    # The confusion matrix was counted on the workers: it covers exactly the test rows.
    codes = split_codes(0, len(df), 0, 0.2, 0.1)
    path = client.download_artifacts(run.info.run_id, "plots/confusion_matrix.json", str(tmp_path))
    assert np.sum(json.loads(Path(path).read_text())["counts"]) == int((codes == TEST).sum())
    # The registered pyfunc predicts raw rows read back from the source, at the logged test accuracy.
    back = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    test = back[codes == TEST]
    mlflow.set_tracking_uri(store)
    served = mlflow.pyfunc.load_model("models:/nnpipe-lake@champion")
    pred = np.asarray(served.predict(test[["a", "b", "c", "d"]])).ravel()
    assert np.mean(pred == test["label"].to_numpy()) == pytest.approx(run.data.metrics["test/accuracy"], abs=1e-9)
    assert run.data.metrics["test/accuracy"] > 0.85


def test_csv_glob_trains_and_registers(tmp_path, store):
    df = table()
    folder = tmp_path / "csv"
    folder.mkdir()
    for i in range(3):
        df.iloc[i * 800:(i + 1) * 800].to_csv(folder / f"part-{i}.csv", index=False)
    with open(folder / "part-2.csv", "rb") as f, gzip.open(folder / "part-2.csv.gz", "wb") as g:
        shutil.copyfileobj(f, g)  # a compressed part among plain ones
    (folder / "part-2.csv").unlink()
    # Single mode: the rows stream through this one process (the cluster path is the Parquet test's).
    done = train("--dataset", str(folder / "part-*.csv*"), "--target", "label", "--features", "a,b,c",
                 "--mode", "single", "--stream", "--epochs", "15", "--hidden", "8", "--batch-size", "16",
                 "--model-name", "glob-model")
    assert done.exit_code == 0, done.output
    assert "glob-model version 1" in done.output
    client, (run,) = runs(store)
    assert run.info.status == "FINISHED" and run.data.tags["dataset.files"] == "3"
    assert run.data.tags["nnpipe.data_path"] == "streaming" and run.data.metrics["test/accuracy"] > 0.8
    assert json.loads(run.data.params["features"].replace("'", '"')) == ["a", "b", "c"]


def test_bad_value_in_part_3_row_17_fails_before_registering(tmp_path, store):
    df = table()
    files = write_parts(df, tmp_path / "lake")
    bad = pd.read_parquet(files[3])
    bad["c"] = bad["c"].astype(str)  # the part was written with the column as text
    bad.loc[16, "c"] = "n/a"
    bad.to_parquet(files[3], index=False)
    done = train("--dataset", str(tmp_path / "lake"), "--target", "label", "--mode", "local-sgd", "--workers", "2",
                 "--epochs", "2", "--model-name", "lake")
    assert done.exit_code == 1
    message = done.output.strip().splitlines()[-1]
    assert "part-3.parquet" in message and "'c'" in message and "row 17" in message and "'n/a'" in message, message
    client, (run,) = runs(store)
    assert run.info.status == "FAILED" and "n/a" in run.data.tags["nnpipe.failure"]
    assert client.search_model_versions("name='lake'") == []
