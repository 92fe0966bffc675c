"""``mlflow models serve -m models:/<name>@champion --env-manager local`` as a real process."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from nnpipe import tracking
from tests.tracking.helpers import (
    MLFLOW,
    STRONG,
    child_env,
    free_port,
    start_server,
    stop,
    train_logged,
)

pytestmark = pytest.mark.server


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def test_models_serve_answers_invocations_with_champion_predictions(sqlite_store, unique_name, iris_splits, tmp_path):
    ds, splits = iris_splits
    version, model, _ = train_logged(unique_name, ds, splits, experiment=unique_name, **STRONG)
    assert tracking.promote_if_better(unique_name, version).promoted

    port = free_port()
    cmd = [MLFLOW, "models", "serve", "-m", f"models:/{unique_name}@champion", "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    proc = start_server(cmd, f"http://127.0.0.1:{port}/ping", tmp_path / "serve.log", child_env(sqlite_store), tmp_path)
    try:
        # columns sent in a different order than trained: the model reorders by name
        columns = list(reversed(splits.feature_names))
        X = splits.raw_test
        frame = {"columns": columns, "data": X[:, ::-1].tolist()}
        labels = post(f"http://127.0.0.1:{port}/invocations", {"dataframe_split": frame})["predictions"]
        assert labels == model.predict(X).tolist()
        assert set(labels) <= set(splits.classes.tolist())

        proba = post(f"http://127.0.0.1:{port}/invocations",
                     {"dataframe_split": frame, "params": {"predict_proba": True}})["predictions"]
        got = np.array([[row[str(c)] for c in splits.classes.tolist()] for row in proba])
        np.testing.assert_allclose(got, model.predict_proba(X), rtol=1e-5, atol=1e-6)

        # integers are numbers (MLflow's own double check would refuse int64)
        whole = {"columns": columns, "data": np.round(X[:, ::-1]).astype(int).tolist()}
        assert post(f"http://127.0.0.1:{port}/invocations", {"dataframe_split": whole})["predictions"] == \
            model.predict(np.round(X)).tolist()
        # text in a feature column: HTTP 400 with one short line naming the column and row
        bad = {"columns": columns, "data": [list(map(float, row)) for row in X[:3, ::-1]]}
        bad["data"][1][0] = "abc"
        with pytest.raises(urllib.error.HTTPError) as err:
            post(f"http://127.0.0.1:{port}/invocations", {"dataframe_split": bad})
        assert err.value.code == 400
        message = json.loads(err.value.read())["message"]
        assert message == f"input column {columns[0]!r} row 1 is 'abc', not a number", message
    finally:
        stop(proc, graceful=False)
