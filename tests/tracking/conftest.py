"""Fixtures for the tracking tests: real stores only.

* ``sqlite_store``: a fresh SQLite tracking + registry store in a temp dir
  (copied from a migrated template, since MLflow's schema migrations are the
  slow part of creating one).
* ``mlflow_server`` (from ``tests/servers.py``, shared with the flow tests):
  one real ``mlflow server`` process per session.
* ``store``: parametrised over both, for tests that must hold over HTTP too.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _forget_store(monkeypatch):
    """MLflow keeps the tracking URI in a global (and echoes it into the env): drop it after each test.

    Depends on ``monkeypatch`` so that it is torn down first and monkeypatch's
    env restoration has the last word.
    """
    yield
    from nnpipe import tracking

    tracking.reset()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    """A migrated, empty MLflow SQLite database file."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("sqlite-template")
    db = root / "mlflow.db"
    c = MlflowClient(tracking_uri=f"sqlite:///{db}", registry_uri=f"sqlite:///{db}")
    c.search_experiments()
    c.search_registered_models()
    return db


@pytest.fixture
def sqlite_store(tmp_path, sqlite_template, monkeypatch) -> str:
    """A fresh SQLite store in ``tmp_path`` configured for this process and its children."""
    from nnpipe import tracking

    db = tmp_path / "mlflow.db"
    for part in sqlite_template.parent.glob("mlflow.db*"):  # the db and any -wal/-shm beside it
        shutil.copy(part, tmp_path / part.name)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # MLflow writes nothing outside the store's dir either way
    assert tracking.configure() == uri
    return uri


@pytest.fixture
def http_store(mlflow_server, monkeypatch, tmp_path) -> str:
    from nnpipe import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    # locks for an http store live in NNPIPE_LOCK_DIR; keep this test's to itself
    monkeypatch.setenv("NNPIPE_LOCK_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert tracking.configure() == mlflow_server
    return mlflow_server


@pytest.fixture(params=["sqlite", "http"])
def store(request) -> str:
    """Each test using this runs once against SQLite and once against the HTTP server."""
    return request.getfixturevalue(f"{request.param}_store")


@pytest.fixture
def unique_name(request) -> str:
    """A model/experiment name no other test (or session on the shared server) uses."""
    return f"{request.node.name.split('[')[0].replace('_', '-')}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def iris_splits():
    from nnpipe.data import load_dataset, split_and_scale

    ds = load_dataset("iris")
    return ds, split_and_scale(ds, test_size=0.2, val_size=0.1, seed=0)
