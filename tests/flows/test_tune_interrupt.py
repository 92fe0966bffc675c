"""Ctrl-C during a real ``nnpipe tune`` (2 trials at once on a local cluster): every trial run ends, exit 130, one line."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.flows.conftest import BIN, clean_env, default_sigint

pytestmark = [pytest.mark.server, pytest.mark.cluster]


def test_ctrl_c_during_tune_leaves_no_run_running_and_keeps_the_best(tmp_path: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # nnpipe's own local server (the default; in its own session, as a user's is): Prefect's temporary server
    # (NNPIPE_PREFECT_SERVER=ephemeral) is in the command's process group and would die with the Ctrl-C
    env = clean_env(tmp_path, MLFLOW_TRACKING_URI=uri)
    cmd = [str(BIN / "nnpipe"), "tune", "--dataset", "digits", "--trials", "40", "--space", "lr=loguniform(1e-3,1e-1)", "--parallel", "2", "--workers", "2",
           "--study", "interrupted"]
    # its own process group, which Ctrl-C in a terminal reaches whole: the driver and its cluster's worker processes
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint, start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        for line in proc.stdout:  # one trial done: the next ones are running, the best so far is in memory
            if line.strip().startswith("trial") and "COMPLETE" in line:
                break
            assert time.monotonic() < deadline, "no trial finished"
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        subprocess.run([str(BIN / "nnpipe"), "server", "stop"], env=env, capture_output=True, timeout=120, check=False)
    assert proc.returncode == 130, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # (Prefect's own temporary-server line aside)
    assert len(errors) == 1 and errors[0].startswith(
        "error: interrupted; the study's run and every open trial run are marked KILLED"), err
    assert "Traceback" not in err and "database is locked" not in err, err  # workers too: no traceback of theirs
    c = MlflowClient(tracking_uri=uri)
    runs = [r for e in c.search_experiments() for r in c.search_runs([e.experiment_id])]
    assert runs and not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    assert any(r.info.status == "KILLED" and r.info.run_name.startswith("trial-") for r in runs)
    # the best trial so far was kept: its model is logged to its run
    best = max((r for r in runs if r.info.run_name.startswith("trial-") and r.info.status == "FINISHED"),
               key=lambda r: r.data.metrics.get("tune/objective", float("-inf")))
    assert any(m.source_run_id == best.info.run_id for m in c.search_logged_models(
        experiment_ids=[best.info.experiment_id]))
