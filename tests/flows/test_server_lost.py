"""The local Prefect server lost under a running ``nnpipe train``: the command ends promptly and says so.

A real ``prefect server start`` (nnpipe's local server in a fresh
PREFECT_HOME) is killed, or frozen with SIGSTOP, while a real ``nnpipe
train`` subprocess runs against it. The timeouts below only bound a hang
(the bug was minutes of retries); they are not speed assertions.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.flows.conftest import BIN, clean_env

pytestmark = pytest.mark.server


def _start_server(env: dict[str, str], cwd: Path) -> int:
    """nnpipe's own local server for this PREFECT_HOME; its pid."""
    subprocess.run([str(BIN / "nnpipe"), "server", "start"], cwd=cwd, env=env, check=True, capture_output=True,
                   timeout=300)
    record = Path(env["PREFECT_HOME"]) / "nnpipe-server" / "server.json"
    return int(json.loads(record.read_text())["pid"])


def _train_until_epoch(env: dict[str, str], cwd: Path, epoch: int) -> subprocess.Popen:
    cmd = [str(BIN / "nnpipe"), "train", "--dataset", "digits", "--hidden", "32", "--epochs", "40"]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(f"epoch {epoch}/"):
            return proc
        assert time.monotonic() < deadline, "training never reached its epoch"
    raise AssertionError(f"train ended before epoch {epoch}: {proc.communicate()}")


def _stop(env: dict[str, str], cwd: Path, pid: int) -> None:
    for sig in (signal.SIGCONT, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    subprocess.run([str(BIN / "nnpipe"), "server", "stop"], cwd=cwd, env=env, capture_output=True, timeout=120, check=False)


def _runs(uri: str) -> list:
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    return [r for e in c.search_experiments() for r in c.search_runs([e.experiment_id])]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return clean_env(tmp_path, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_server_killed_mid_train_the_command_still_registers_and_ends_with_one_line(tmp_path, env):
    pid = _start_server(env, tmp_path)
    proc = None
    try:
        proc = _train_until_epoch(env, tmp_path, 3)
        os.killpg(pid, signal.SIGKILL)  # the server and its children, as the OOM killer or `kill -9` would
        out, err = proc.communicate(timeout=120)  # was: minutes of retries after the model was registered
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.communicate()
        _stop(env, tmp_path, pid)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "EventsWorker" not in err and "Error logging to API" not in err, err
    warnings = [line for line in err.splitlines() if "went away" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: the Prefect server at http://127.0.0.1:"), err
    assert f"(pid {pid}) has exited" in warnings[0] and "version 1 are recorded" in warnings[0], err
    assert "model:       nnpipe-digits version 1" in out, out
    from mlflow import MlflowClient

    run_id = warnings[0].split("MLflow run ", 1)[1].split()[0]
    assert MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"]).get_run(run_id).info.status == "FINISHED"
    assert f"MLflow run:  {run_id}" in out
    assert not [r.info.run_name for r in _runs(env["MLFLOW_TRACKING_URI"]) if r.info.status == "RUNNING"]


def test_sigterm_ends_train_even_when_the_prefect_server_hangs(tmp_path, env):
    env["NNPIPE_TERM_GRACE_S"] = "5"
    pid = _start_server(env, tmp_path)
    proc = None
    try:
        proc = _train_until_epoch(env, tmp_path, 3)
        os.killpg(pid, signal.SIGSTOP)  # the port still accepts, nothing answers: every API call hangs
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)  # was: deaf to SIGTERM while Prefect retried the dead API
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.communicate()
        _stop(env, tmp_path, pid)
    # Either nnpipe closed its books in time (130, the run KILLED) or the grace period ended it (143).
    assert proc.returncode in (130, 143), err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors and "terminated by SIGTERM" in errors[-1], err
    assert "Traceback" not in err, err
    if proc.returncode == 143:
        assert "still closing after 5 s" in errors[-1], err
