"""What a model server needs from the registry: a verified load, the alias's target, live metrics.

``nnpipe serve`` (:mod:`nnpipe.serve`) sits above this layer and never imports
mlflow itself. It loads a version through :func:`load_verified`, which checks
every file's SHA-256 against the digests recorded at registration
(:mod:`nnpipe.tracking.integrity`) and then reads nnpipe's own
``model.json`` + ``weights.npz`` from that verified copy: no code and no
pickle from the store, and none of the pyfunc wrapper's per-request work.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Mapping

import pandas as pd
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.models import Model as MlflowModel

from nnpipe.model import Model
from nnpipe.tracking import integrity
from nnpipe.tracking.errors import TrackingError
from nnpipe.tracking.pyfunc import LOADER_MODULE
from nnpipe.tracking.registry import RUN_ID_TAG
from nnpipe.tracking.store import client


@dataclass(frozen=True)
class VerifiedVersion:
    """A registered version loaded from a digest-checked copy.

    Attributes
    ----------
    name : str
    version : int
    model : nnpipe.Model
        Predicts on raw features; carries the scaler (``mean``, ``scale``) and labels.
    example : DataFrame or None
        The input example logged with the model (for a smoke prediction).
    run_id : str or None
        The run that produced the version (where live metrics about it go).
    """

    name: str
    version: int
    model: Model
    example: pd.DataFrame | None
    run_id: str | None


def _not_found(exc: MlflowException) -> bool:
    return exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or "not found" in str(exc).lower()


def alias_target(name: str, alias: str) -> int | None:
    """The version ``alias`` of ``name`` points to; None when the model or the alias does not exist (yet).

    One lookup by alias (about 6 ms on SQLite, where reading the whole registered
    model takes 20): a server calls this every second in every worker.
    """
    try:
        return int(client().get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise


def load_verified(name: str, version: int) -> VerifiedVersion:
    """Load version ``version`` of ``name`` after checking every file against its recorded digest.

    Raises
    ------
    TamperedModel
        A file changed, is missing or was added since registration (or no digests were recorded).
    TrackingError
        The version is not an nnpipe model (its ``MLmodel`` names another loader).
    """
    c = client()
    mv = c.get_model_version(name, str(int(version)))
    with integrity.verified_copy(name, int(version), c) as local:
        meta = MlflowModel.load(str(local / "MLmodel"))
        flavor = meta.flavors.get("python_function", {})
        if flavor.get("loader_module") != LOADER_MODULE or not flavor.get("data"):
            raise TrackingError(f"model {name!r} v{int(version)} is not an nnpipe model (loader "
                                f"{flavor.get('loader_module')!r}); nnpipe serve loads nnpipe models only")
        model = Model.load(local / flavor["data"])
        example = meta.load_input_example(str(local))  # read now: the copy is removed on exit
    if example is not None and not isinstance(example, pd.DataFrame):
        example = pd.DataFrame(example)
    return VerifiedVersion(name, int(version), model, example, mv.run_id or mv.tags.get(RUN_ID_TAG))


def safe_key(key: str) -> str:
    """``key`` with every character MLflow refuses in a metric name (``(``, ``%``, ...) replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", key)


def log_live_metrics(run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log ``metrics`` (keys like ``shadow/agreement``) to ``run_id`` at ``step`` (default: unix seconds)."""
    now = int(time.time() * 1000)
    step = int(now // 1000) if step is None else int(step)
    batch = [Metric(safe_key(k), float(v), now, step) for k, v in metrics.items()]
    if batch:
        client().log_batch(run_id, metrics=batch)


def run_metrics(run_id: str | None, prefix: str) -> dict[str, float]:
    """The latest value of each metric of ``run_id`` whose key starts with ``prefix`` ({} if none)."""
    if not run_id:
        return {}
    try:
        metrics = client().get_run(run_id).data.metrics
    except MlflowException as exc:
        if _not_found(exc):
            return {}
        raise
    return {k: float(v) for k, v in metrics.items() if k.startswith(prefix)}


def version_run(name: str, version: int) -> str | None:
    """The run id behind version ``version`` of ``name`` (None if the version has none)."""
    mv = client().get_model_version(name, str(int(version)))
    return mv.run_id or mv.tags.get(RUN_ID_TAG)

