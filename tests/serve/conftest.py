"""Fixtures for the serving tests: a real SQLite registry with trained iris versions, real servers.

``registry`` (one per test module): a scratch store with two registered iris
versions, v1 trained well (champion) and v2 barely trained (candidate), so
the two predict differently and a response shows which one answered.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest

from tests.tracking.conftest import iris_splits, sqlite_template  # noqa: F401  (session fixtures)
from tests.tracking.helpers import STRONG, WEAK, scratch_store, train_logged


@dataclass
class Registry:
    root: Path
    uri: str
    name: str
    models: dict[int, Any]  # version -> nnpipe.Model
    splits: Any

    @property
    def columns(self) -> list[str]:
        return list(self.splits.feature_names)

    def set_alias(self, alias: str, version: int) -> None:
        """A move made the way the MLflow UI makes it: straight through the client, no nnpipe."""
        from mlflow import MlflowClient

        MlflowClient().set_registered_model_alias(self.name, alias, str(version))

    def model_dir(self, version: int) -> Path:
        import mlflow

        from nnpipe import tracking

        model_id = tracking.get_version(self.name, version).source.removeprefix("models:/")
        return Path(urlparse(mlflow.get_logged_model(model_id).artifact_location).path)


@pytest.fixture(scope="module")
def registry(tmp_path_factory, sqlite_template, iris_splits) -> Registry:  # noqa: F811
    from nnpipe import tracking

    ds, splits = iris_splits
    with scratch_store(tmp_path_factory, sqlite_template, "serve") as (root, uri):
        name = "iris-serve"
        v1, m1, _ = train_logged(name, ds, splits, experiment=name, **STRONG)
        assert tracking.promote_if_better(name, v1).promoted
        v2, m2, _ = train_logged(name, ds, splits, experiment=name, **WEAK)
        assert (m1.predict(splits.raw_test) != m2.predict(splits.raw_test)).any()
        yield Registry(root, uri, name, {v1: m1, v2: m2}, splits)
        tracking.reset()


def post(url: str, body: Any, content_type: str = "application/json", timeout: float = 30) -> tuple[int, Any, dict]:
    """``(status, headers (case-insensitive .get), json body)`` of a POST, whatever the status."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, json.loads(exc.read() or b"{}")


def wait_for(predicate, timeout: float, what: str, every: float = 0.05) -> float:
    """Seconds until ``predicate()`` is true; fails naming ``what`` after ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(every)
    raise AssertionError(f"not within {timeout} s: {what}")


def split_body(X: np.ndarray, columns: list[str]) -> dict:
    return {"dataframe_split": {"columns": columns, "data": X.tolist()}}
