"""MLflow's scoring protocol: request bodies in, ``{"predictions": ...}`` out.

The bodies ``mlflow models serve`` accepts on ``POST /invocations``:

* ``application/json`` with exactly one of ``dataframe_split``
  (``{"columns": [...], "data": [[...], ...]}``), ``dataframe_records``
  (``[{"col": value, ...}, ...]``), ``instances`` or ``inputs`` (a list of rows,
  a list of records, or a dict of columns), and optionally ``params``
  (``{"predict_proba": true}``);
* ``text/csv`` with a header row.

The common case, numbers in rows, becomes a float array without pandas (that is
most of the speed of ``nnpipe serve`` on small requests); anything else becomes
a DataFrame and goes through the model's own input check, so both paths refuse
bad input with the same one-line message naming the column and row.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

JSON_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
_NUMBER = (int, float)


class RequestError(Exception):
    """A request the server refuses: ``status`` (400, 413, 415) and a one-line ``message``."""

    def __init__(self, status: int, message: str, code: str = "BAD_REQUEST"):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@dataclass
class Parsed:
    """A request's rows: ``values`` (float array, ``columns`` or None for positional) or ``frame``."""

    values: np.ndarray | None = None
    columns: list[str] | None = None
    frame: pd.DataFrame | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        return len(self.values) if self.values is not None else len(self.frame)


def _numeric_rows(rows: Any) -> np.ndarray | None:
    """``rows`` as a float array if it is a non-empty list of equal-length lists of plain numbers, else None."""
    if not isinstance(rows, list) or not rows or not isinstance(rows[0], list):
        return None
    width = len(rows[0])
    for row in rows:
        # bool is an int subclass, and True is not a measurement: leave it to the slow path to refuse
        if not isinstance(row, list) or len(row) != width or not all(type(v) in _NUMBER for v in row):
            return None
    return np.array(rows, dtype=np.float64)


def _records(records: list[Any]) -> Parsed:
    first = records[0] if records else None
    if isinstance(first, dict):
        columns = list(first)
        if all(isinstance(r, dict) and list(r) == columns and all(type(v) in _NUMBER for v in r.values())
               for r in records):
            return Parsed(values=np.array([list(r.values()) for r in records], dtype=np.float64),
                          columns=[str(c) for c in columns])
        return Parsed(frame=pd.DataFrame.from_records(records))
    values = _numeric_rows(records)
    if values is not None:
        return Parsed(values=values)
    return Parsed(frame=pd.DataFrame(records))


def _rows(key: str, payload: Any) -> Parsed:
    if key == "dataframe_split":
        if not isinstance(payload, dict) or "data" not in payload:
            raise RequestError(400, "dataframe_split must be an object with 'columns' and 'data'")
        columns, data = payload.get("columns"), payload["data"]
        values = _numeric_rows(data)
        if values is not None and (columns is None or (isinstance(columns, list) and len(columns) == values.shape[1])):
            return Parsed(values=values, columns=None if columns is None else [str(c) for c in columns])
        try:
            return Parsed(frame=pd.DataFrame(data, columns=columns))
        except (ValueError, TypeError) as exc:
            raise RequestError(400, f"dataframe_split is not a table: {str(exc).splitlines()[0]}") from None
    if key == "dataframe_records":
        if not isinstance(payload, list):
            raise RequestError(400, "dataframe_records must be a list of records")
        return _records(payload)
    # instances / inputs: rows, records, or a dict of columns
    if isinstance(payload, dict):
        try:
            return Parsed(frame=pd.DataFrame({str(k): (v if isinstance(v, list) else [v]) for k, v in payload.items()}))
        except ValueError as exc:
            raise RequestError(400, f"{key} is not a table: {str(exc).splitlines()[0]}") from None
    if not isinstance(payload, list):
        raise RequestError(400, f"{key} must be a list of rows, a list of records or an object of columns")
    return _records(payload)


def parse(body: bytes, content_type: str | None) -> Parsed:
    """The rows and params of an ``/invocations`` body; :class:`RequestError` if it is not one MLflow accepts."""
    kind = (content_type or "application/json").split(";")[0].strip().lower()
    if kind == "text/csv":
        try:
            return Parsed(frame=pd.read_csv(io.BytesIO(body)))
        except (ValueError, pd.errors.ParserError) as exc:
            raise RequestError(400, f"CSV body could not be read: {str(exc).splitlines()[0]}") from None
    if kind != "application/json":
        raise RequestError(415, f"content type {kind!r} is not supported; send application/json or text/csv",
                           code="UNSUPPORTED_MEDIA_TYPE")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise RequestError(400, f"request body must be a JSON object with one of the keys {list(JSON_KEYS)}")
    keys = [k for k in JSON_KEYS if k in doc]
    if len(keys) != 1:
        raise RequestError(400, f"request body must have exactly one of the keys {list(JSON_KEYS)}, "
                                f"got {sorted(doc)}")
    params = doc.get("params") or {}
    if not isinstance(params, dict):
        raise RequestError(400, f"params must be an object, got {params!r}")
    parsed = _rows(keys[0], doc[keys[0]])
    parsed.params = params
    return parsed


def predictions_json(predictions: Any, version: int) -> bytes:
    """``{"predictions": [...], "model_version": version}`` as MLflow's server shapes predictions."""
    if isinstance(predictions, pd.DataFrame):
        out: Any = predictions.to_dict(orient="records")
    else:
        out = np.asarray(predictions).tolist()
    return json.dumps({"predictions": out, "model_version": version}).encode()


def error_json(message: str, code: str = "BAD_REQUEST", **extra: Any) -> bytes:
    """An error body shaped like MLflow's: ``{"error_code": ..., "message": ...}``."""
    return json.dumps({"error_code": code, "message": message, **extra}).encode()
