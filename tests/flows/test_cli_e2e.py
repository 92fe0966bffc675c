"""The README's first command, run as a new user would, then checked with the MLflow client."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest

from tests.flows.conftest import BIN, clean_env

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def user_home(tmp_path_factory) -> Iterator[Path]:
    """One new user's HOME for the module: the local Prefect server it starts is stopped at the end."""
    home = tmp_path_factory.mktemp("home")
    yield home
    subprocess.run([str(BIN / "nnpipe"), "server", "stop"], env=clean_env(home), capture_output=True, timeout=60)


def nnpipe(args: list[str], cwd: Path, home: Path, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "nnpipe"), *args], cwd=cwd, env=clean_env(home), capture_output=True,
                          text=True, timeout=timeout)


def test_first_command_then_bad_csv(tmp_path: Path, user_home: Path):
    """`nnpipe train` with defaults registers v1 as champion; a bad CSV then fails cleanly and changes nothing."""
    import mlflow
    from mlflow import MlflowClient

    from nnpipe.data import load_dataset, split_and_scale

    done = nnpipe(["train"], tmp_path, user_home)
    assert done.returncode == 0, done.stdout + done.stderr
    # A new user's first command starts the local Prefect server and says so; it stays for later commands.
    assert "starting a local Prefect server" in done.stderr, done.stderr
    status = nnpipe(["server", "status"], tmp_path, user_home, timeout=60)
    assert status.returncode == 0 and "running: UI http://127.0.0.1:" in status.stdout, status.stdout + status.stderr
    out = done.stdout
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert (tmp_path / "mlflow.db").is_file()
    assert f"mlflow ui --backend-store-uri {uri}" in out
    assert "nnpipe-iris version 1" in out and "promoted to champion" in out
    # Plain progress lines when not a terminal, against the pipeline's 100-epoch budget.
    assert re.search(r"^epoch 1/100: train/loss=\S+", out, re.M), out

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exps = [e for e in client.search_experiments() if e.name != "nnpipe-registry-history"]  # not the alias ledger
    runs = [r for e in exps for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    assert run.info.run_id in out
    champion = client.get_model_version_by_alias("nnpipe-iris", "champion")
    assert str(champion.version) == "1" and champion.run_id == run.info.run_id

    # The champion serves raw held-out features and returns the labels at the logged accuracy.
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        served = mlflow.pyfunc.load_model("models:/nnpipe-iris@champion")
    finally:
        # mlflow mirrors these into MLFLOW_*_URI env vars; leave none behind for later tests in this process
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
        os.environ.pop("MLFLOW_REGISTRY_URI", None)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    splits = split_and_scale(load_dataset("iris"), test_size=0.2, val_size=0.1, seed=0)
    frame = pd.DataFrame(splits.raw_test, columns=splits.feature_names)  # the signature names the columns
    pred = np.asarray(served.predict(frame)).ravel()
    accuracy = float(np.mean(pred.astype(splits.y_test.dtype) == splits.y_test))
    assert accuracy == pytest.approx(run.data.metrics["test/accuracy"], abs=1e-9)
    assert accuracy >= 0.8

    # Bad input: a non-numeric cell. One clear line, non-zero exit, refused before any run starts
    # (the CLI's pre-flight reads small files), nothing registered.
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,label\n1.0,2.0,x\n3.0,oops,y\n5.0,6.0,x\n")
    failed = nnpipe(["train", "--dataset", str(bad), "--target", "label", "--model-name", "nnpipe-iris"], tmp_path,
                    user_home)
    assert "starting a local Prefect server" not in failed.stderr  # the running one was reused
    assert failed.returncode != 0
    assert "Traceback" not in failed.stderr + failed.stdout
    message = failed.stderr.strip().splitlines()[-1]
    assert "bad.csv" in message and "'b'" in message and "row 2" in message and "'oops'" in message, failed.stderr
    runs = [r for e in exps for r in client.search_runs([e.experiment_id])]
    assert sorted(r.info.status for r in runs) == ["FINISHED"]
    assert [str(v.version) for v in client.search_model_versions("name='nnpipe-iris'")] == ["1"]
    assert str(client.get_model_version_by_alias("nnpipe-iris", "champion").version) == "1"


def test_bad_flag_values_exit_cleanly(tmp_path: Path, user_home: Path):
    """Bad option values: exit 1 with one line on stderr quoting the value, no traceback."""
    for args, quoted in ((["--mode", "turbo"], "turbo"), (["--lr", "-1"], "-1")):
        done = nnpipe(["train", *args], tmp_path, user_home, timeout=200)
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr
        assert quoted in done.stderr.strip().splitlines()[-1]
