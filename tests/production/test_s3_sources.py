"""``s3://`` sources against a real S3 server (rclone serve s3): parts, bad values, and one-line access errors."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from nnpipe.data import DataError
from nnpipe.sources import open_source, prepare
from nnpipe.sources.remote import probe
from tests.flows.conftest import REPO

pytestmark = pytest.mark.server


def put_parts(prefix: str, df: pd.DataFrame, n_parts: int = 4) -> None:
    import s3fs

    fs = s3fs.S3FileSystem()
    size = -(-len(df) // n_parts)
    for i in range(n_parts):
        with fs.open(f"{prefix}/part-{i}.parquet", "wb") as f:
            df.iloc[i * size:(i + 1) * size].to_parquet(f, row_group_size=50, index=False)


def frame(n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.standard_normal((n, 3)), columns=["f0", "f1", "f2"])
    df["label"] = np.where(df["f0"] > 0, "yes", "no")
    return df


@pytest.fixture(autouse=True)
def fresh_filesystems():
    """s3fs caches filesystems by their arguments, not by the environment a test changes."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


def test_a_directory_of_parts_reads_like_a_local_one_and_a_bad_value_names_the_object(s3_store):
    df = frame()
    put_parts("lake/good", df)
    source = open_source("s3://lake/good/", "label")
    assert source.n_rows == len(df) and len(source.files) == 4
    assert all(url.startswith("s3://lake/good/part-") for url, _ in source.files)
    prepared = prepare(source)
    assert prepared.n_rows == len(df) and sorted(prepared.classes) == ["no", "yes"]
    assert "secret" not in repr(source.describe()).lower()  # nothing of the credentials travels with the source

    bad = df.copy()
    bad["f1"] = bad["f1"].astype(str)
    bad.loc[bad.index[100 + 16], "f1"] = "oops"  # the 17th row of part-1
    put_parts("lake/bad", bad)
    with pytest.raises(DataError) as err:
        prepare(open_source("s3://lake/bad/*.parquet", "label"))
    msg = str(err.value)
    assert "s3://lake/bad/part-1.parquet" in msg and "'f1'" in msg and "row 17" in msg and "'oops'" in msg, msg


@pytest.mark.parametrize("env, expected", [
    ({}, "bucket 'nobucket' not found at http://127.0.0.1:"),
    ({"AWS_SHARED_CREDENTIALS_FILE": os.devnull}, "no S3 credentials found; set AWS_ACCESS_KEY_ID"),
    ({"AWS_ACCESS_KEY_ID": "wrong", "AWS_SECRET_ACCESS_KEY": "wrong", "AWS_SHARED_CREDENTIALS_FILE": os.devnull},
     "access denied by http://127.0.0.1:"),
    ({"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, "cannot reach the S3 endpoint http://127.0.0.1:9"),
], ids=["missing-bucket", "no-credentials", "wrong-credentials", "unreachable"])
def test_access_errors_are_one_line_that_says_what_to_fix(s3_store, monkeypatch, env, expected):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    location = "s3://nobucket/x/" if not env else "s3://lake/good/"
    with pytest.raises(DataError) as err:
        probe(location)
    assert expected in str(err.value) and "\n" not in str(err.value), str(err.value)
    with pytest.raises(DataError, match="^s3://"):  # open_source probes first: the same line, not "no such file"
        open_source(location, "label")


def test_credentials_in_the_url_are_refused_without_echoing_them():
    with pytest.raises(DataError) as err:
        probe("s3://AKIAX:topsecret@lake/good/")
    assert "topsecret" not in str(err.value) and "AWS_ACCESS_KEY_ID" in str(err.value)


def test_cli_fails_before_anything_starts_and_names_the_bucket(s3_store, tmp_path):
    from tests.flows.conftest import clean_env

    env = clean_env(tmp_path, NNPIPE_PREFECT_SERVER="ephemeral", MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'm.db'}")
    done = subprocess.run([sys.executable, "-m", "nnpipe.cli", "train", "--dataset", "s3://nobucket/iris/",
                           "--target", "label"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "bucket 'nobucket' not found" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "m.db").exists()  # no MLflow run was started for it


def test_cli_names_an_s3_part_whose_columns_differ_before_anything_starts(s3_store, tmp_path):
    # Parquet footers only: the run would otherwise start and fail on the workers with a KeyError naming no file
    from tests.flows.conftest import clean_env

    df = frame(200)
    put_parts("lake/mixed", df, n_parts=2)
    put_parts("lake/mixed-extra", df.drop(columns=["f1"]), n_parts=1)
    import s3fs

    s3fs.S3FileSystem().copy("lake/mixed-extra/part-0.parquet", "lake/mixed/part-2.parquet")
    env = clean_env(tmp_path, NNPIPE_PREFECT_SERVER="ephemeral", MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'm.db'}")
    done = subprocess.run([sys.executable, "-m", "nnpipe.cli", "train", "--dataset", "s3://lake/mixed/",
                           "--target", "label", "--mode", "sync", "--workers", "2"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: s3://lake/mixed/part-2.parquet: its columns differ from s3://lake/mixed/part-0.parquet's; "
                      "missing ['f1'] (name the columns to use with --features)"], done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "m.db").exists()  # no MLflow run, no Prefect flow run, no cluster
