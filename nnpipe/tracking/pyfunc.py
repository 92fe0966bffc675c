"""nnpipe models as MLflow pyfunc models, without pickle.

The logged model holds nnpipe's own files only: ``model.json`` (spec, label
mapping, feature names) and ``weights.npz`` (parameters and scaler, arrays
only) under ``data/``, plus MLflow's ``MLmodel`` whose ``loader_module`` is
this module. Loading imports that module from the *installed* nnpipe and
calls :func:`_load_pyfunc` on the data directory: no code and no pickle is
read from the artifact store. The serving environment needs nnpipe installed
(``--env-manager local`` in the environment that trained it).

Prediction refuses rather than guesses: a missing feature column, a
non-numeric (text, a boolean, a list), NaN or infinite value is a one-line
:class:`BadInput` (a ``ValueError`` and an ``MlflowException``, so ``mlflow
models serve`` answers 400 with that line) naming the column and the row.
The signature names the input columns but types them ``Any`` and optional,
so that MLflow's own schema check, which refuses integers for a ``double``
column and dumps the whole request in a multi-line message, leaves every
check to :func:`check_input`.

Prediction takes raw feature columns (a DataFrame named like the training
features, or a 2-D array in that order) and returns the original labels (or
values, for regression). Pass ``params={"predict_proba": True}`` (over REST:
``{"dataframe_split": ..., "params": {"predict_proba": true}}``) to get a
DataFrame of class probabilities, one column per label.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, infer_signature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import AnyType, ColSpec, Schema

from nnpipe.data.checks import check_features
from nnpipe.model import Model
from nnpipe.tracking.store import client
from nnpipe.version import __version__

_LOG_LOCK = threading.Lock()
PROBA_PARAM = "predict_proba"
MODEL_NAME = "model"  # the ``name`` of the logged model within its run
EXAMPLE_ROWS = 5
LOADER_MODULE = __name__  # MLmodel's loader_module: this installed module, never code from the store


class BadInput(MlflowException, ValueError):
    """Input the model cannot predict from; the message is one line naming the column and row.

    The scoring server of ``mlflow models serve`` prefixes a failed prediction's
    message with a dump of the whole request (``Failed to predict data '...'``);
    this message keeps its own text, so the HTTP 400 answer stays one line.
    """

    def __init__(self, message: str):
        self._short = str(message)
        super().__init__(self._short, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:  # type: ignore[override]
        return self._short

    @message.setter
    def message(self, value: str) -> None:
        pass  # the server's prefix (the request's data) is dropped on purpose


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def feature_frame(X: Any, feature_names: list[str] | None) -> pd.DataFrame:
    """``X`` (2-D array or DataFrame) as a DataFrame with the model's feature columns."""
    if isinstance(X, pd.DataFrame):
        return X
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"input example must be 2-D (n_samples, n_features), got shape {X.shape}")
    names = feature_names or [f"x{i}" for i in range(X.shape[1])]
    if len(names) != X.shape[1]:
        raise ValueError(f"input example has {X.shape[1]} columns but the model has features {names!r}")
    return pd.DataFrame(X.astype(np.float64), columns=names)


def check_input(model: Model, model_input: Any) -> np.ndarray:
    """Raw features of ``model_input`` in the trained column order; ValueError naming column and row."""
    names = model.feature_names
    if isinstance(model_input, pd.DataFrame):
        # integer column labels: an array sent as-is, in the trained column order
        positional = len(model_input.columns) > 0 and all(isinstance(c, (int, np.integer))
                                                           for c in model_input.columns)
        twice = model_input.columns[model_input.columns.duplicated()]
        if len(twice):  # which of the two would be the feature? refuse rather than pick one
            raise ValueError(f"input column {str(twice[0])!r} is given twice; send each column once")
        if names and not positional:
            missing = [n for n in names if n not in model_input.columns]
            if missing:
                raise ValueError(f"input is missing column(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
                                 f"the model needs {len(names)} columns")
            model_input = model_input[names]  # column order as trained, whatever order was sent
        for col in model_input.columns:
            column = model_input[col]
            # (a numeric column holds no strings: the usual request skips this per-row Python check)
            if len(column) and not pd.api.types.is_numeric_dtype(column.dtype) and \
                    column.map(lambda v, name=str(col): isinstance(v, str) and v == name).all():
                # MLflow's schema check (it runs before this code) turns a column sent twice into one
                # holding the column's name in each row (for a 2-row frame; other sizes fail in MLflow)
                raise ValueError(f"input column {str(col)!r} holds its own name in every row: it was sent twice "
                                 "(MLflow's schema check put the name in its place); send each column once")
            values = pd.to_numeric(column, errors="coerce")
            bad = values.isna() & column.notna()
            if column.dtype == bool or column.dtype == object:  # True is not a measurement
                bad |= column.map(lambda v: isinstance(v, (bool, np.bool_))).astype(bool)
            if column.dtype.kind == "c" or column.dtype == object:  # 1+2j would lose its imaginary part
                bad |= column.map(lambda v: isinstance(v, (complex, np.complexfloating)) and v.imag != 0).astype(bool)
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                value = column.iloc[row]
                value = value.item() if isinstance(value, np.generic) else value
                raise ValueError(f"input column {str(col)!r} row {row} is {value!r}, not a number")
        model_input = model_input.to_numpy(dtype=np.float64, na_value=np.nan)
    return check_features(model_input, "input", model.spec.n_inputs, columns=names, allow_1d=True)


class NnpipePyfunc:
    """The loaded model MLflow wraps: predicts original labels (or values) on raw features."""

    def __init__(self, model: Model):
        self.model = model

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray | pd.DataFrame:
        """Original labels (or values); class probabilities with ``params={"predict_proba": True}``."""
        model = self.model
        try:
            X = check_input(model, model_input)
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        if params and _truthy(params.get(PROBA_PARAM, False)):
            if model.classes is None:
                raise ValueError("predict_proba was requested but this is a regression model (no classes)")
            return pd.DataFrame(_answer(model.predict_proba, X), columns=[str(c) for c in model.classes.tolist()])
        return _answer(model.predict, X)


class InputChecked:
    """A loaded pyfunc model whose ``predict`` refuses what MLflow's schema check would garble first.

    MLflow enforces the signature before :class:`NnpipePyfunc` sees the
    input; a column sent twice fails there with the whole frame in the
    message. Every other attribute is the wrapped model's.
    """

    def __init__(self, model: Any):
        self._model = model

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        if isinstance(data, pd.DataFrame):
            twice = data.columns[data.columns.duplicated()]
            if len(twice):
                raise BadInput(f"input column {str(twice[0])!r} is given twice; send each column once")
        return self._model.predict(data, params=params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def _answer(predict: Any, X: np.ndarray) -> Any:
    """``predict(X)``, a value the model refuses (too large for its dtype) as :class:`BadInput`."""
    try:
        return predict(X)
    except ValueError as exc:
        raise BadInput(str(exc).replace("X column", "input column", 1)) from None


def _load_pyfunc(data_path: str) -> NnpipePyfunc:
    """MLflow's entry for ``loader_module`` models: read ``model.json`` and ``weights.npz`` (no pickle)."""
    return NnpipePyfunc(Model.load(data_path))


def _open_inputs(signature: ModelSignature) -> ModelSignature:
    """The signature's input columns, named but typed ``Any`` and optional: :func:`check_input` checks them."""
    cols = [ColSpec(AnyType(), c.name, required=False) for c in signature.inputs.inputs]
    return ModelSignature(Schema(cols), signature.outputs, signature.params)


def log_model(run_id: str, model: Model, input_example: Any, name: str = MODEL_NAME, step: int = 0) -> str:
    """Log ``model`` as a pyfunc named ``name`` in run ``run_id``.

    Parameters
    ----------
    run_id : str
        The (active or finished) run the model belongs to.
    model : nnpipe.Model
    input_example : ndarray of shape (n_samples, n_features) or DataFrame
        Raw features; the first rows become the input example, and with the
        model's predictions on them, the signature.
    name : str
        The logged model's name (shown in the run's and the experiment's model lists).
    step : int
        MLflow attaches the run's metrics logged at this step to the model
        (its page shows them): the step of the final metrics.

    Returns
    -------
    str
        The model URI (``models:/m-...``) to pass to :func:`nnpipe.tracking.register_model`.
    """
    if not isinstance(model, Model):
        raise TypeError(f"model must be an nnpipe.Model, got {type(model).__name__}")
    example = feature_frame(input_example, model.feature_names).head(EXAMPLE_ROWS)
    if len(example) == 0:
        raise ValueError("input example has no rows")
    outputs = model.predict(example.to_numpy(dtype=np.float64))
    signature = _open_inputs(infer_signature(example, outputs, params={PROBA_PARAM: False}))
    with tempfile.TemporaryDirectory(prefix="nnpipe-model-") as tmp:
        saved = model.save(Path(tmp) / "nnpipe_model")
        # One at a time per process: while validating the serving example MLflow patches os.environ's
        # class to record the variables read, and two threads doing so at once (a sweep's trials)
        # fail with "Set changed size during iteration".
        with _LOG_LOCK, _in_run(run_id):
            info = mlflow.pyfunc.log_model(
                name=name,
                step=step,
                loader_module=LOADER_MODULE,
                data_path=str(saved),
                signature=signature,
                input_example=example,
                # listed, not inferred: inference loads the model in a subprocess (slow)
                pip_requirements=[
                    f"mlflow=={mlflow.__version__}",
                    f"numpy=={np.__version__}",
                    f"pandas=={pd.__version__}",
                ],
                metadata={"nnpipe_version": __version__, "task": model.task},
            )
    return info.model_uri


class _in_run:
    """Make ``run_id`` the active run for the block, restoring its status afterwards.

    ``mlflow.pyfunc.log_model`` links the model to the active run; a flow may
    log after its ``training_run`` block, so resume the run if needed.
    """

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.status: str | None = None

    def __enter__(self) -> None:
        active = mlflow.active_run()
        if active is not None and active.info.run_id == self.run_id:
            return
        run = client().get_run(self.run_id)
        # A child of the active run (a tuning trial under its study) may be resumed nested in it.
        if active is not None and run.data.tags.get("mlflow.parentRunId") != active.info.run_id:
            raise ValueError(
                f"cannot log a model to run {self.run_id!r} while run {active.info.run_id!r} is active; "
                "log it inside that run's block or after it ends"
            )
        self.status = run.info.status
        mlflow.start_run(run_id=self.run_id, nested=active is not None)

    def __exit__(self, *exc: Any) -> None:
        if self.status is not None:
            mlflow.end_run()
            if self.status != "FINISHED":  # keep RUNNING (another process owns it) or FAILED as it was
                client().update_run(self.run_id, status=self.status)
