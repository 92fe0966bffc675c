"""Where runs and models are kept: tracking URI resolution and the client.

With no configuration nnpipe tracks to ``sqlite:///<cwd>/mlflow.db`` (MLflow's
own default); ``MLFLOW_TRACKING_URI`` selects another store or a tracking
server. The registry URI follows the tracking URI unless
``MLFLOW_REGISTRY_URI`` says otherwise.

For SQLite stores nnpipe keeps artifacts next to the database
(``<db dir>/mlartifacts``) instead of MLflow's ``./mlruns`` relative to the
*current* directory, so a store used from two directories stays in one place.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import mlflow
from mlflow import MlflowClient

ENV_URI = "MLFLOW_TRACKING_URI"
ENV_REGISTRY_URI = "MLFLOW_REGISTRY_URI"


def default_uri() -> str:
    """``sqlite:///<cwd>/mlflow.db``."""
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def tracking_uri() -> str:
    """The tracking URI nnpipe uses: ``MLFLOW_TRACKING_URI`` if set, else :func:`default_uri`."""
    return os.environ.get(ENV_URI) or default_uri()


def registry_uri(uri: str | None = None) -> str:
    """``MLFLOW_REGISTRY_URI`` if set, else the tracking URI."""
    return os.environ.get(ENV_REGISTRY_URI) or (uri or tracking_uri())


def configure(uri: str | None = None) -> str:
    """Point MLflow's tracking and registry at ``uri`` (or :func:`tracking_uri`).

    Parameters
    ----------
    uri : str, optional
        A tracking URI (``sqlite:///...``, ``http://host:port``, ...).

    Returns
    -------
    str
        The tracking URI now in use.
    """
    uri = uri or tracking_uri()
    if not isinstance(uri, str) or not uri.strip():
        raise ValueError(f"tracking URI must be a non-empty string, got {uri!r}")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry_uri(uri))
    return uri


def current_uri() -> str:
    """The URI MLflow is pointed at now (after :func:`configure`, or the env/default)."""
    if mlflow.tracking.is_tracking_uri_set():
        return mlflow.get_tracking_uri()
    return tracking_uri()


def ensure_configured() -> str:
    """:func:`configure` from the environment unless a URI was already set; returns it."""
    if mlflow.tracking.is_tracking_uri_set():
        return mlflow.get_tracking_uri()
    return configure()


def client() -> MlflowClient:
    """A client for the configured tracking and registry stores (configuring from the env if needed)."""
    uri = ensure_configured()
    return MlflowClient(tracking_uri=uri, registry_uri=mlflow.get_registry_uri())


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None.

    As in SQLAlchemy, ``sqlite:///rel.db`` is relative to the working directory
    and ``sqlite:////abs/path.db`` is absolute.
    """
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(uri[len("sqlite:///"):].split("?", 1)[0])
    return (path if path.is_absolute() else Path.cwd() / path).resolve()


def artifact_root(uri: str | None = None) -> str | None:
    """Artifact root for new experiments: ``<db dir>/mlartifacts`` for SQLite, else None (server decides)."""
    db = sqlite_path(uri or current_uri())
    return None if db is None else (db.parent / "mlartifacts").as_uri()
