"""Fixtures for the flow tests: one Prefect test server per session, scratch MLflow stores, subprocess envs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


# package, not session: an idle Prefect server takes ~10% of a core until it stops
@pytest.fixture(scope="package")
def prefect_harness():
    """One temporary Prefect API server for every in-process flow test (startup is slow on 2 cores)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture
def mlflow_uri(tmp_path: Path) -> str:
    """A fresh SQLite MLflow store for one test."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def default_sigint() -> None:
    """``preexec_fn`` for a child that a test sends SIGINT: its default handler back.

    A process started from a background job (``cmd &``, CI runners) inherits
    SIGINT as ignored, and so would the child: it would never stop, and the
    test would hang until pytest-timeout instead of failing.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a new user: no Prefect/MLflow/Dask settings, telemetry off, a fresh HOME."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MLFLOW_", "DASK_"))}
    env.update(HOME=str(home), PREFECT_HOME=str(home / ".prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               DO_NOT_TRACK="1", MLFLOW_ENABLE_TELEMETRY="false", PYTHONUNBUFFERED="1")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env
