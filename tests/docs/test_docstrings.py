"""The ``Examples`` sections of the public front run, with ``doctest``, as a reader would run them.

The distributed examples reach the session's two-worker cluster through
``DASK_SCHEDULER_ADDRESS``; the tuning example writes its MLflow store and
Optuna journal in a fresh folder.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

MODULES = ["nnpipe.api", "nnpipe.keras", "nnpipe.tuning.api"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str, cluster: str, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    module = importlib.import_module(name)
    found = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert found.attempted > 0, f"{name} has no Examples to run"
    assert found.failed == 0, f"{found.failed} of {found.attempted} examples of {name} failed (doctest output above)"


def test_a_wrong_example_fails(tmp_path: Path):
    """doctest really compares: an example whose output is wrong is counted as failed."""
    import types

    module = types.ModuleType("planted")
    module.__doc__ = ">>> 1 + 1\n3\n"
    assert doctest.testmod(module, report=False).failed == 1
