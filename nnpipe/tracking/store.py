"""Where runs and models are kept: tracking URI resolution and the client.

With no configuration nnpipe tracks to ``sqlite:///<cwd>/mlflow.db`` (MLflow's
own default); ``MLFLOW_TRACKING_URI`` selects another store or a tracking
server. The registry URI follows the tracking URI unless
``MLFLOW_REGISTRY_URI`` says otherwise.

For SQLite stores nnpipe keeps artifacts next to the database
(``<db dir>/mlartifacts``) instead of MLflow's ``./mlruns`` relative to the
*current* directory, so a store used from two directories stays in one place.

A new SQLite database is created (MLflow runs its whole migration chain)
under the store's lock, once per process: processes started at once on a
brand-new store otherwise race through the migrations and can leave it
broken (``table _alembic_tmp_latest_metrics already exists``).

A tracking URI with credentials (``http://user:password@host``) is split: the
user and password go to ``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD`` (where
MLflow's client reads them) and only the clean URI is configured, so it is
the clean one that reaches parameters, logs and messages.
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from nnpipe.redact import move_credentials_to_env
from nnpipe.tracking.flock import file_lock, sqlite_lock_path

ENV_URI = "MLFLOW_TRACKING_URI"
ENV_REGISTRY_URI = "MLFLOW_REGISTRY_URI"


def default_uri() -> str:
    """``sqlite:///<cwd>/mlflow.db``."""
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def tracking_uri() -> str:
    """The tracking URI nnpipe uses: ``MLFLOW_TRACKING_URI`` if set, else :func:`default_uri`."""
    return os.environ.get(ENV_URI) or default_uri()


# mlflow.set_registry_uri() copies its argument into MLFLOW_REGISTRY_URI "for
# subprocesses"; remember what we set so a later configure(other_uri) does not
# mistake that echo for the user's choice and keep the old registry.
_registry_we_set: str | None = None
_env_before: dict[str, str | None] | None = None  # the user's env, restored by reset()


def registry_uri(uri: str | None = None) -> str:
    """``MLFLOW_REGISTRY_URI`` if the user set it, else the tracking URI."""
    env = os.environ.get(ENV_REGISTRY_URI)
    if env and env != _registry_we_set:
        return env
    return uri or tracking_uri()


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
    global _registry_we_set, _env_before
    if _env_before is None:
        _env_before = {k: os.environ.get(k) for k in _ENV_KEYS}
    uri = move_credentials_to_env(uri)
    registry = move_credentials_to_env(registry_uri(uri))
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry)
    _registry_we_set = registry
    for store_uri in dict.fromkeys((uri, registry)):
        if sqlite_path(store_uri) is not None:
            _create_once(store_uri)
    return uri


_ENV_KEYS = (ENV_URI, ENV_REGISTRY_URI, "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
_created: set[str] = set()


def _create_once(uri: str) -> None:
    """Open (creating and migrating if new) the SQLite store at ``uri`` under its lock, once per process.

    MLflow creates the schema when a store object is first built for a URI,
    and caches that object per process; building both stores here, under the
    lock, makes every later use in this process a plain open.
    """
    if uri in _created:
        return
    db = sqlite_path(uri)
    db.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(sqlite_lock_path(db)):  # the lock that orders promotions (locking.lock_path)
        c = MlflowClient(tracking_uri=uri, registry_uri=uri)
        c.search_experiments(max_results=1)
        c.search_registered_models(max_results=1)
    _created.add(uri)


def reset() -> None:
    """Forget :func:`configure` (MLflow's global URIs and the environment it copied them to).

    For tests and long-lived processes that switch stores; the next call
    resolves the store from the environment again.
    """
    global _registry_we_set, _env_before
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    for key, value in (_env_before or {}).items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _registry_we_set = _env_before = None
    _created.clear()


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
