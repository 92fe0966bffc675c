"""Session-wide settings shared by every test directory.

No network here: telemetry off everywhere, and each test process gets its own
scratch MLflow store and Prefect home so nothing touches the user's.
"""

from __future__ import annotations

import os
import tempfile

import pytest

# Set before prefect, mlflow or dask are imported anywhere.
_HOME = tempfile.mkdtemp(prefix="nnpipe-tests-")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("PREFECT_HOME", os.path.join(_HOME, "prefect"))
os.environ.setdefault("NNPIPE_CACHE_DIR", os.path.join(_HOME, "cache"))
os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.pop("DASK_SCHEDULER_ADDRESS", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("MLFLOW_REGISTRY_URI", None)
os.environ.pop("PREFECT_API_URL", None)


# Fixtures that start processes: a test using one is marked for it, so the quick
# tier `pytest -m "not server and not cluster"` really starts none.
SERVER_FIXTURES = {"prefect_harness", "mlflow_server", "http_store"}
CLUSTER_FIXTURES = {"cluster", "client"}


# The longest files, started first: with two test processes taking whole files (pytest-xdist --dist loadfile,
# --no-loadscope-reorder keeps this order), a long file that starts last is the run's tail.
LONGEST_FIRST = ("tests/production/test_stack.py", "tests/tracking/test_concurrency.py", "tests/flows/test_stack.py",
                 "tests/docs/test_examples.py")


def pytest_collection_modifyitems(config, items):
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: file order kept otherwise
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("store") == "http":
            names.add("http_store")  # the `store` fixture picks it by parameter
        if names & SERVER_FIXTURES:
            item.add_marker(pytest.mark.server)
        if names & CLUSTER_FIXTURES:
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(autouse=True)
def _no_registry_echo():
    """No test inherits an MLFLOW_REGISTRY_URI from an earlier one.

    ``mlflow.set_registry_uri`` (nnpipe.tracking.configure) echoes the registry into
    the environment. A test's ``monkeypatch`` puts back whatever it found, so an echo
    an earlier test left can outlive the ``tracking.reset()`` that forgot it, and
    then reads as the user's choice: the next store's registry stays the old one
    (seen when xdist ran the files in another order). No test sets it for longer than
    itself, so it goes after each one; torn down last, after ``monkeypatch``.
    """
    yield
    os.environ.pop("MLFLOW_REGISTRY_URI", None)


def pytest_sessionfinish(session, exitstatus):
    """Stop the local Prefect server a CLI test may have started in this session's PREFECT_HOME."""
    from pathlib import Path

    from nnpipe.deploy import local_prefect

    local_prefect.stop_server(Path(os.environ["PREFECT_HOME"]))


from tests.servers import mlflow_server  # noqa: E402,F401  (a session fixture every directory may use)
