"""Server fixtures shared by every test directory (imported by tests/conftest.py).

``mlflow_server``: one real ``mlflow server`` per session on 127.0.0.1 and a
free port (SQLite backend, proxied artifacts), started from the venv's
``mlflow`` executable. Imports are inside the fixture so that collecting the
core tests never imports mlflow.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    """URL of a real ``mlflow server`` on 127.0.0.1 (SQLite backend, proxied artifacts)."""
    from tests.tracking.helpers import MLFLOW, child_env, free_port, start_server, stop

    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    cmd = [
        MLFLOW, "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--workers", "1",
    ]
    url = f"http://127.0.0.1:{port}"
    # the server's background job runner (GenAI scorers; eight huey processes) has
    # nothing to do for nnpipe and costs the 2-core machine seconds at start-up
    env = child_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    proc = start_server(cmd, f"{url}/health", root / "server.log", env, root)
    yield url
    stop(proc)
