"""Browser links to MLflow pages for the store in use.

A tracking server's pages are at its own URL. A local store (SQLite, a
directory) has no web server until someone starts one, so its links point at
what :func:`ui_command` will serve (``mlflow ui ... --port 5000``), and the
command is printed beside them. ``NNPIPE_MLFLOW_UI_URL`` overrides the base
(a server behind a proxy, or a UI started on another port).
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from urllib.parse import quote, urlsplit, urlunsplit

ENV_UI_URL = "NNPIPE_MLFLOW_UI_URL"
LOCAL_PORT = 5000


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@lru_cache(maxsize=1)
def local_port() -> int:
    """The port the printed ``mlflow ui`` command uses: :data:`LOCAL_PORT` if free, else one free now (per process)."""
    if _free(LOCAL_PORT):
        return LOCAL_PORT
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_server(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def ui_base(tracking_uri: str) -> str:
    """The browser base URL of the MLflow UI for ``tracking_uri`` (no trailing slash)."""
    if os.environ.get(ENV_UI_URL):
        return os.environ[ENV_UI_URL].rstrip("/")
    if is_server(tracking_uri):
        parts = urlsplit(tracking_uri)
        host = parts.netloc.rsplit("@", 1)[-1]  # never print credentials embedded in the URI
        return urlunsplit((parts.scheme, host, parts.path, "", "")).rstrip("/")
    return f"http://127.0.0.1:{local_port()}"


def ui_command(tracking_uri: str) -> str | None:
    """The command that serves the UI for a local store (None for a server: it is already up)."""
    if is_server(tracking_uri) or os.environ.get(ENV_UI_URL):
        return None
    return f"mlflow ui --backend-store-uri {tracking_uri} --port {local_port()}"


# MLflow 3.17's UI opens an experiment on its GenAI overview unless told the workflow: this
# query lands on the runs table (and the run page keeps the "Model training" side bar).
TRAINING_VIEW = "?workflowType=machine_learning"


def experiment_url(tracking_uri: str, experiment_id: str) -> str:
    """The experiment's runs table (not the GenAI overview MLflow 3.17 opens by default)."""
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}{TRAINING_VIEW}"


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}{TRAINING_VIEW}"


def model_url(tracking_uri: str, name: str) -> str:
    return f"{ui_base(tracking_uri)}/#/models/{quote(name, safe='')}"


def version_url(tracking_uri: str, name: str, version: int | str) -> str:
    return f"{model_url(tracking_uri, name)}/versions/{version}"
