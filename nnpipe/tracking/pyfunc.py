"""nnpipe models as MLflow pyfunc models, without pickle.

The logged model holds nnpipe's own files (``model.json`` with the spec, label
mapping and feature names; ``weights.npz`` with the parameters and scaler) as
an artifact, and its Python code is *model-from-code*: MLflow copies
:mod:`nnpipe.tracking.model_code` into the model and runs it at load time,
so no nnpipe object is ever pickled. The serving environment needs nnpipe
installed (``--env-manager local`` in the environment that trained it).

Prediction takes raw feature columns (a DataFrame named like the training
features, or a 2-D array in that order) and returns the original labels (or
values, for regression). Pass ``params={"predict_proba": True}`` (over REST:
``{"dataframe_split": ..., "params": {"predict_proba": true}}``) to get a
DataFrame of class probabilities, one column per label.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature

from nnpipe.version import __version__
from nnpipe.model import Model
from nnpipe.tracking.store import client

ARTIFACT_KEY = "nnpipe_model"
PROBA_PARAM = "predict_proba"
MODEL_NAME = "model"  # the ``name`` of the logged model within its run
EXAMPLE_ROWS = 5
MODEL_CODE = Path(__file__).with_name("model_code.py")


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


class NnpipePyfunc(mlflow.pyfunc.PythonModel):
    """Loads an nnpipe :class:`~nnpipe.model.Model` from its artifact and predicts on raw features."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.model = Model.load(context.artifacts[ARTIFACT_KEY])

    # pd.DataFrame is a hint MLflow derives no schema from: the logged signature
    # stays the one contract (other hints would add a second, hint-derived schema).
    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> np.ndarray | pd.DataFrame:
        """Original labels (or values); class probabilities with ``params={"predict_proba": True}``."""
        model = self.model
        if isinstance(model_input, pd.DataFrame):
            names = model.feature_names
            if names and all(n in model_input.columns for n in names):
                model_input = model_input[names]  # column order as trained, whatever order was sent
            X = model_input.to_numpy(dtype=np.float64)
        else:
            X = np.asarray(model_input, dtype=np.float64)
        if params and _truthy(params.get(PROBA_PARAM, False)):
            if model.classes is None:
                raise ValueError("predict_proba was requested but this is a regression model (no classes)")
            return pd.DataFrame(model.predict_proba(X), columns=[str(c) for c in model.classes.tolist()])
        return model.predict(X)


def log_model(run_id: str, model: Model, input_example: Any) -> str:
    """Log ``model`` as a pyfunc named ``model`` in run ``run_id``.

    Parameters
    ----------
    run_id : str
        The (active or finished) run the model belongs to.
    model : nnpipe.Model
    input_example : ndarray of shape (n_samples, n_features) or DataFrame
        Raw features; the first rows become the input example, and with the
        model's predictions on them, the signature.

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
    signature = infer_signature(example, outputs, params={PROBA_PARAM: False})
    with tempfile.TemporaryDirectory(prefix="nnpipe-model-") as tmp:
        saved = model.save(Path(tmp) / "nnpipe_model")
        with _in_run(run_id):
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME,
                python_model=str(MODEL_CODE),
                artifacts={ARTIFACT_KEY: str(saved)},
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
