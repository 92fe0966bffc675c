"""Request parsing and the drift arithmetic, without a model or a store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nnpipe.serve.drift import DriftMonitor
from nnpipe.serve.protocol import RequestError, parse, predictions_json


def body(doc) -> bytes:
    return json.dumps(doc).encode()


def test_numbers_in_rows_take_the_array_path_and_anything_else_the_frame_path():
    fast = parse(body({"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2.5], [3, 4]]}}), "application/json")
    assert fast.frame is None and fast.columns == ["a", "b"] and fast.values.tolist() == [[1.0, 2.5], [3.0, 4.0]]
    records = parse(body({"dataframe_records": [{"a": 1, "b": 2}, {"a": 3, "b": 4}]}), "application/json")
    assert records.columns == ["a", "b"] and records.values.tolist() == [[1, 2], [3, 4]]
    rows = parse(body({"instances": [[1, 2], [3, 4]], "params": {"predict_proba": True}}), "application/json; charset=utf-8")
    assert rows.columns is None and rows.params == {"predict_proba": True} and rows.n_rows == 2
    # a boolean, a string, a ragged row: left to the model's own check, which names the column and row
    for doc in ({"instances": [[1, True]]}, {"inputs": [[1, "x"]]}, {"dataframe_records": [{"a": 1}, {"b": 2}]}):
        parsed = parse(body(doc), "application/json")
        assert parsed.values is None and parsed.frame is not None
    columns = parse(body({"inputs": {"a": [1, 2], "b": [3, 4]}}), "application/json")
    assert columns.frame.to_dict(orient="list") == {"a": [1, 2], "b": [3, 4]}
    csv = parse(b"a,b\n1,2\n", "text/csv")
    assert csv.frame.to_dict(orient="list") == {"a": [1], "b": [2]}


@pytest.mark.parametrize("raw, content_type, status, words", [
    (b"{", "application/json", 400, "not valid JSON"),
    (b"[1, 2]", "application/json", 400, "must be a JSON object"),
    (b'{"instances": [[1]], "inputs": [[1]]}', "application/json", 400, "exactly one of the keys"),
    (b'{"dataframe_split": [[1]]}', "application/json", 400, "'columns' and 'data'"),
    (b'{"instances": 3}', "application/json", 400, "list of rows"),
    (b'{"instances": [[1]], "params": 3}', "application/json", 400, "params must be an object"),
    (b"a,b", "application/xml", 415, "application/xml"),
])
def test_bodies_mlflow_would_refuse_are_refused_with_one_line(raw, content_type, status, words):
    with pytest.raises(RequestError) as err:
        parse(raw, content_type)
    assert err.value.status == status and words in err.value.message and "\n" not in err.value.message


def test_predictions_are_shaped_like_mlflows_and_name_the_version():
    assert json.loads(predictions_json(np.array([0, 2]), 7)) == {"predictions": [0, 2], "model_version": 7}


def test_drift_is_the_standardised_shift_of_recent_rows():
    monitor = DriftMonitor(["a", "b"], mean=np.array([0.0, 10.0]), scale=np.array([2.0, 0.0]), halflife=100)
    assert monitor.shift() is None
    monitor.observe(np.tile([1.0, 10.5], (50, 1)))
    np.testing.assert_allclose(monitor.shift(), [0.5, 0.5])  # a constant training column: shift in raw units
    for _ in range(20):  # 2000 rows later the old ones have faded (20 half-lives)
        monitor.observe(np.tile([-2.0, 10.0], (100, 1)))
    np.testing.assert_allclose(monitor.shift(), [-1.0, 0.0], atol=1e-5)
    report = monitor.report()
    assert report["rows"] == 2050 and report["features"][0]["live_mean"] == pytest.approx(-2.0, abs=1e-5)
