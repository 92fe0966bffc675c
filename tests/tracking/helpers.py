"""Training and fresh-process helpers shared by the tracking tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from nnpipe import TrainConfig, tracking
from nnpipe.api import train
from nnpipe.deploy import stack
from nnpipe.deploy.stack import free_port  # noqa: F401  (re-exported for the tests)

VENV_BIN = Path(sys.executable).parent
MLFLOW = str(VENV_BIN / "mlflow")
NNPIPE = str(VENV_BIN / "nnpipe")
SERVER_START_TIMEOUT = 240  # 2 shared cores: the first import of mlflow alone can take many seconds


def child_env(uri: str | None = None, **extra: str) -> dict[str, str]:
    """Environment for a subprocess: no telemetry, single-threaded BLAS, the given store."""
    env = dict(os.environ)
    env.update({"MLFLOW_ENABLE_TELEMETRY": "false", "DO_NOT_TRACK": "1", "OMP_NUM_THREADS": "1",
                "OPENBLAS_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.pop("MLFLOW_REGISTRY_URI", None)
    # as if the venv were activated: `mlflow models serve` execs `uvicorn` by name
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    if uri is not None:
        env["MLFLOW_TRACKING_URI"] = uri
    env.update(extra)
    return env


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = SERVER_START_TIMEOUT) -> None:
    """Poll ``url`` until it answers 200; fail with the process log if it dies or times out."""
    stack.wait_http(url, timeout, proc=proc, log=log)


def stop(proc: subprocess.Popen, graceful: bool = True) -> None:
    """Stop a server we started (its own process group: uvicorn workers go too).

    A stateless scoring server can simply be killed; the tracking server gets
    SIGTERM so that it closes its database cleanly.
    """
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM if graceful else signal.SIGKILL)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def start_server(cmd: list[str], health: str, log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    out = open(log, "wb")
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(health, proc, log)
    except BaseException:
        stop(proc)
        raise
    return proc


# Fixed settings so the two trainings differ clearly: one epoch at a tiny
# learning rate leaves iris near chance; 40 epochs of Adam learn it.
WEAK = dict(epochs=1, lr=1e-3, batch_size=16, seed=1)
STRONG = dict(epochs=40, lr=1e-2, batch_size=16, seed=2)


@contextmanager
def scratch_store(tmp_path_factory, sqlite_template: Path, label: str) -> Iterator[tuple[Path, str]]:
    """A copy of the migrated template store in a new folder, configured (env, cwd) for the block."""
    import pytest

    root = tmp_path_factory.mktemp(label)
    shutil.copy(sqlite_template, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(root)
        tracking.configure(uri)
        yield root, uri


def train_logged(name: str, ds, splits, experiment: str, **config):
    """Train on iris inside a tracked run, log the model, register it; returns (version, model, run_id)."""
    cfg = TrainConfig(**config)
    params = {"train": cfg.to_dict(), "model": {"hidden": [16], "activation": "relu"}, "data": {"name": ds.name}}
    with tracking.training_run(experiment, params, tracking.run_tags(ds.name, ds.content_hash)) as run:
        run_id = run.info.run_id
        result = train(splits, cfg, hidden=(16,), callbacks=[tracking.metrics_callback(run_id)])
        model = result.model
        tracking.log_final_metrics(run_id, model.evaluate(splits.raw_test, splits.y_test))
        tracking.log_training_artifacts(run_id, result.history, params, splits.y_test,
                                        model.predict(splits.raw_test), splits.classes)
        uri = tracking.log_model(run_id, model, splits.raw_test)
    version = tracking.register_model(uri, name, run_id)
    return version, model, run_id


def weak_then_strong(name: str, ds, splits) -> tuple[int, int]:
    """Two gated versions of ``name``: v1 weak (champion first), v2 strong (champion now)."""
    v1, _, _ = train_logged(name, ds, splits, experiment=name, **WEAK)
    tracking.promote_if_better(name, v1)
    v2, _, _ = train_logged(name, ds, splits, experiment=name, **STRONG)
    assert tracking.promote_if_better(name, v2).promoted
    return v1, v2


_LOAD = r"""
import json, sys
import numpy as np, pandas as pd, mlflow
uri, path = sys.argv[1], sys.argv[2]
m = mlflow.pyfunc.load_model(uri)
X = pd.DataFrame(np.load(path), columns=json.loads(sys.argv[3]))
labels = m.predict(X)
proba = m.predict(X, params={"predict_proba": True})
print(json.dumps({"labels": np.asarray(labels).tolist(), "proba": proba.to_numpy().tolist(),
                  "columns": list(proba.columns)}))
"""


def load_in_fresh_process(model_uri: str, tracking_uri: str, X: np.ndarray, columns: list[str], tmp: Path) -> dict:
    """Load ``model_uri`` with ``mlflow.pyfunc.load_model`` in a new Python process and predict ``X``."""
    path = tmp / "X.npy"
    np.save(path, X)
    out = subprocess.run(
        [sys.executable, "-c", _LOAD, model_uri, str(path), json.dumps(columns)],
        env=child_env(tracking_uri), capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def assert_serves(model_uri: str, tracking_uri: str, expected, splits, tmp: Path) -> None:
    """The model behind ``model_uri`` (fresh process) has exactly ``expected``'s weights."""
    got = load_in_fresh_process(model_uri, tracking_uri, splits.raw_test, splits.feature_names, tmp)
    np.testing.assert_allclose(np.array(got["proba"]), expected.predict_proba(splits.raw_test), rtol=1e-5, atol=1e-6)
    assert got["labels"] == expected.predict(splits.raw_test).tolist()
    assert got["columns"] == [str(c) for c in expected.classes.tolist()]
