"""The serving app in this process (Starlette's TestClient over the real ASGI app) on a real SQLite registry.

No server process: the app, its alias watcher threads and MLflow are real;
only the socket is skipped. The process-level behaviour (workers, SIGTERM,
`nnpipe rollback` from another process) is in test_cli_serve.py.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from starlette.testclient import TestClient

from typer.testing import CliRunner

from nnpipe import tracking
from nnpipe.cli import app as cli
from nnpipe.serve import ServeConfig, create_app
from tests.serve.conftest import split_body, wait_for
from tests.tracking.helpers import WEAK, train_logged


@pytest.fixture
def app_for(registry):
    """``app_for(**config)``: a running app (lifespan entered) on the module's registry; closed after the test."""
    clients = []

    def make(**overrides) -> TestClient:
        config = ServeConfig(**{"name": registry.name, "poll": 0.1, "report_every": 3600, **overrides})
        client = TestClient(create_app(config))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def served_version(client: TestClient) -> int | None:
    return client.get("/version").json()["version"]


def test_every_mlflow_body_gives_the_models_predictions_and_names_the_version(registry, app_for):
    registry.set_alias("champion", 1)
    client = app_for()
    wait_for(lambda: client.get("/ping").status_code == 200, 30, "the champion loaded")
    X, cols, model = registry.splits.raw_test, registry.columns, registry.models[1]
    expected = model.predict(X).tolist()
    frame = pd.DataFrame(X, columns=cols)
    bodies = {
        "dataframe_split": split_body(X, cols),
        "dataframe_split, columns reversed": split_body(X[:, ::-1], cols[::-1]),
        "dataframe_records": {"dataframe_records": frame.to_dict(orient="records")},
        "instances (rows)": {"instances": X.tolist()},
        "inputs (records)": {"inputs": frame.to_dict(orient="records")},
        "inputs (columns)": {"inputs": {c: frame[c].tolist() for c in cols}},
        "integers": split_body(np.round(X).astype(int), cols),
    }
    for what, body in bodies.items():
        r = client.post("/invocations", json=body)
        assert r.status_code == 200, (what, r.text)
        want = model.predict(np.round(X)).tolist() if what == "integers" else expected
        assert r.json()["predictions"] == want, what
        assert r.json()["model_version"] == 1 and r.headers["x-model-version"] == "1", what
    csv = frame.to_csv(index=False).encode()
    r = client.post("/invocations", content=csv, headers={"Content-Type": "text/csv"})
    assert r.status_code == 200 and r.json()["predictions"] == expected
    proba = client.post("/invocations", json={**split_body(X, cols), "params": {"predict_proba": True}}).json()
    got = np.array([[row[str(c)] for c in model.classes.tolist()] for row in proba["predictions"]])
    np.testing.assert_allclose(got, model.predict_proba(X), rtol=1e-5, atol=1e-6)


def test_bad_input_is_one_line_naming_column_and_row_and_limits_answer_413(registry, app_for):
    registry.set_alias("champion", 1)
    client = app_for(max_rows=50, max_body=20_000)
    wait_for(lambda: client.get("/ping").status_code == 200, 30, "the champion loaded")
    cols = registry.columns
    rows = registry.splits.raw_test[:3].tolist()
    rows[1][2] = "abc"
    r = client.post("/invocations", json={"dataframe_split": {"columns": cols, "data": rows}})
    assert r.status_code == 400
    assert r.json()["message"] == f"input column {cols[2]!r} row 1 is 'abc', not a number"
    rows[1][2] = True  # a boolean is not a measurement either
    assert "row 1 is True, not a number" in client.post(
        "/invocations", json={"dataframe_split": {"columns": cols, "data": rows}}).json()["message"]
    r = client.post("/invocations", json={"dataframe_split": {"columns": cols[:3], "data": [[1.0, 2.0, 3.0]]}})
    assert r.status_code == 400 and repr(cols[3]) in r.json()["message"] and "\n" not in r.json()["message"]
    twice = {"columns": [*cols, cols[0]], "data": [[*row, row[0]] for row in registry.splits.raw_test[:3].tolist()]}
    r = client.post("/invocations", json={"dataframe_split": twice})  # all numbers: the fast path checks it too
    assert r.status_code == 400 and r.json()["message"] == (
        f"input column {cols[0]!r} is given twice; send each column once")
    twice["data"][0][-1] = "x"  # a mixed frame goes the DataFrame way: the same line
    assert client.post("/invocations", json={"dataframe_split": twice}).json()["message"] == r.json()["message"]
    r = client.post("/invocations", json={"columns": cols})
    assert r.status_code == 400 and "dataframe_split" in r.json()["message"]
    r = client.post("/invocations", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["message"]
    r = client.post("/invocations", content=b"x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415

    many = split_body(np.tile(registry.splits.raw_test[:1], (51, 1)), cols)
    r = client.post("/invocations", json=many)
    assert r.status_code == 413 and "51 rows; the limit is 50" in r.json()["message"]
    huge = b'{"instances": [' + b",".join([b"[1.0, 2.0, 3.0, 4.0]"] * 2000) + b"]}"
    r = client.post("/invocations", content=huge, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "limit is 20000" in r.json()["message"]
    metrics = client.get("/metrics").text
    assert 'nnpipe_serve_input_errors_total{status="413"} 2.0' in metrics
    assert 'nnpipe_serve_requests_total{status="400",version="1"}' in metrics


def test_starts_before_the_alias_exists_and_serves_once_it_is_set(registry, app_for):
    client = app_for(alias="staging")
    wait_for(lambda: "no alias 'staging'" in client.get("/ping").text, 30, "the watcher read the registry")
    r = client.post("/invocations", json=split_body(registry.splits.raw_test[:2], registry.columns))
    assert r.status_code == 503 and "no alias 'staging' yet" in r.json()["message"]
    registry.set_alias("staging", 2)
    wait_for(lambda: client.get("/ping").status_code == 200, 10, "staging loaded")
    r = client.post("/invocations", json=split_body(registry.splits.raw_test[:2], registry.columns))
    assert r.status_code == 200 and r.headers["x-model-version"] == "2"


def test_a_ui_style_move_is_followed_and_a_tampered_version_is_refused_while_the_old_one_serves(
        registry, app_for, iris_splits):
    registry.set_alias("champion", 1)
    client = app_for(retry_after=3600)
    wait_for(lambda: served_version(client) == 1, 30, "v1 served")
    registry.set_alias("champion", 2)  # MlflowClient, as the MLflow UI does: nnpipe is not told
    took = wait_for(lambda: served_version(client) == 2, 5, "the move to v2 followed")
    assert took < 5
    X = registry.splits.raw_test
    assert client.post("/invocations", json=split_body(X, registry.columns)).json()["predictions"] == \
        registry.models[2].predict(X).tolist()

    ds, splits = iris_splits
    v3, _, _ = train_logged(registry.name, ds, splits, experiment=registry.name, **WEAK)
    weights = registry.model_dir(v3) / "data" / "nnpipe_model" / "weights.npz"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\x00" * 8)  # corrupted after registration
    registry.set_alias("champion", v3)
    wait_for(lambda: str(v3) in client.get("/version").json()["refused"], 10, "the tampered version refused")
    info = client.get("/version").json()
    assert info["version"] == 2 and info["alias_points_to"] == v3
    assert "weights.npz" in info["refused"][str(v3)] and "SHA-256" in info["refused"][str(v3)]
    r = client.post("/invocations", json=split_body(X, registry.columns))
    assert r.status_code == 200 and r.headers["x-model-version"] == "2"
    assert f'nnpipe_serve_refused_versions_total{{alias="champion",version="{v3}"}} 1.0' in client.get("/metrics").text
    registry.set_alias("champion", 1)
    wait_for(lambda: served_version(client) == 1, 5, "back to v1 after the refusal")


def test_shadow_agreement_reaches_mlflow_and_drift_moves_with_shifted_inputs(registry, app_for):
    registry.set_alias("champion", 1)
    registry.set_alias("candidate", 2)
    client = app_for(shadow="candidate")
    wait_for(lambda: (client.get("/version").json()["shadow"] or {}).get("version") == 2 and
             served_version(client) == 1, 30, "champion and shadow loaded")
    X, cols = registry.splits.raw_test, registry.columns
    for start in range(0, len(X), 5):
        assert client.post("/invocations", json=split_body(X[start:start + 5], cols)).status_code == 200
    server = client.app.state.server
    expected = float(np.mean(registry.models[1].predict(X) == registry.models[2].predict(X)))
    wait_for(lambda: (server.shadow.snapshot() or 0) and server.shadow.snapshot().rows == len(X), 10, "shadow scored")
    assert server.shadow.snapshot().value == pytest.approx(expected)
    server.report()  # what the reporter thread does every --report-every seconds
    run_id = tracking.get_version(registry.name, 2).run_id
    logged = tracking.client().get_run(run_id).data.metrics
    assert logged["shadow/agreement"] == pytest.approx(expected) and logged["shadow/rows"] == len(X)
    assert f'nnpipe_serve_shadow_agreement{{kind="agreement",shadow_version="2"}} {expected}' in \
        client.get("/metrics").text
    table = CliRunner().invoke(cli, ["models", registry.name, "--tracking-uri", registry.uri])
    assert table.exit_code == 0 and "shadow/" in table.output, table.output  # a column (squeezed at 160 wide)

    def shift() -> np.ndarray:
        return np.array([f["shift"] for f in client.get("/drift").json()["features"]])

    before = shift()
    moved = X.copy()
    moved[:, 0] += 3 * registry.models[1].scale[0]  # three training standard deviations on the first feature
    for _ in range(20):
        client.post("/invocations", json=split_body(moved, cols))
    after = shift()
    assert after[0] - before[0] > 1.0, (before, after)
    assert np.abs(after[1:] - before[1:]).max() < 0.5
    gauge = [line for line in client.get("/metrics").text.splitlines()
             if line.startswith(f'nnpipe_serve_feature_shift{{feature="{cols[0]}"}}')]
    assert float(gauge[0].split()[-1]) == pytest.approx(after[0])
    server.report()
    live = tracking.client().get_run(tracking.get_version(registry.name, 1).run_id).data.metrics
    assert live["live/shift_max"] == pytest.approx(np.abs(after).max())

    # a swap sends the old version's last window to the old version's run, and starts over for the new one
    for _ in range(5):
        client.post("/invocations", json=split_body(X, cols))
    rows = server.drift.rows
    run2 = tracking.get_version(registry.name, 2).run_id
    logged_for_v2 = len(tracking.client().get_metric_history(run2, "live/rows"))  # earlier tests served v2 too
    registry.set_alias("champion", 2)
    wait_for(lambda: served_version(client) == 2, 5, "the move to v2 followed")
    run1 = tracking.get_version(registry.name, 1).run_id

    def v1_window_logged() -> bool:
        history = tracking.client().get_metric_history(run1, "live/rows")
        return max((m.value for m in history), default=0.0) == rows

    # the swap is visible to requests first; the watcher thread then logs v1's last window and starts a new one
    wait_for(v1_window_logged, 10, "v1's last drift window reached v1's run", every=0.2)
    wait_for(lambda: server.drift.rows == 0, 5, "a new drift window for v2")
    assert len(tracking.client().get_metric_history(run2, "live/rows")) == logged_for_v2


def test_csv_without_header_row_names_and_empty_bodies_are_refused(registry, app_for):
    registry.set_alias("champion", 1)
    client = app_for()
    wait_for(lambda: client.get("/ping").status_code == 200, 30, "the champion loaded")
    buf = io.StringIO()
    pd.DataFrame(registry.splits.raw_test[:2]).to_csv(buf, index=False)
    r = client.post("/invocations", content=buf.getvalue().encode(), headers={"Content-Type": "text/csv"})
    assert r.status_code == 400 and "missing column" in r.json()["message"]
    r = client.post("/invocations", json={"instances": []})
    assert r.status_code == 400


def test_the_alias_change_hook_sees_each_move_once(registry):
    from nnpipe.serve import AliasWatcher

    seen = []
    watcher = AliasWatcher(registry.name, "hooked", on_change=[lambda alias, old, new: seen.append((alias, old, new))])
    watcher.check()  # the first read is the starting point, not a move
    assert seen == [] and watcher.current is None
    registry.set_alias("hooked", 2)
    watcher.check()
    watcher.check()
    assert seen == [("hooked", None, 2)] and watcher.current.version == 2


def test_prediction_shift_compares_the_predicted_classes_with_the_training_mix(registry, app_for):
    registry.set_alias("champion", 1)
    client = app_for()
    wait_for(lambda: served_version(client) == 1, 30, "the champion loaded")
    X, cols, model = registry.splits.raw_test, registry.columns, registry.models[1]
    assert model.class_freq is not None and model.class_freq.sum() == pytest.approx(1.0)
    pred = model.predict(X)
    label = pred[0]
    one_class = X[pred == label]  # rows the model puts in one class: the live mix is that class alone
    for _ in range(10):
        assert client.post("/invocations", json=split_body(one_class, cols)).status_code == 200
    report = client.get("/drift").json()
    shares = {c["label"]: c for c in report["classes"]}
    assert shares[label.item()]["live_share"] == pytest.approx(1.0)
    train_share = float(model.class_freq[list(model.classes).index(label)])
    assert shares[label.item()]["train_share"] == pytest.approx(train_share)
    assert report["prediction_shift"] == pytest.approx(1.0 - train_share)
    client.app.state.server.tick()  # what the gauge thread does every second
    gauge = [line for line in client.get("/metrics").text.splitlines()
             if line.startswith("nnpipe_serve_prediction_shift ")]
    assert float(gauge[0].split()[-1]) == pytest.approx(1.0 - train_share)
