"""A driver killed outright (SIGKILL): the next command ends its run FAILED, the next flow its flow run Crashed.

The driver is a real ``nnpipe train`` on a real cluster of worker processes,
SIGKILLed in the middle of training as the OOM killer would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import distributed
import pytest
from mlflow import MlflowClient

from tests.distributed.helpers import local_cluster
from tests.flows.conftest import BIN, clean_env

pytestmark = [pytest.mark.server, pytest.mark.cluster]


def held_keys(client: distributed.Client) -> dict[str, list[str]]:
    """Per worker, the nnpipe shards, trainers and results it still holds."""

    def keys(dask_worker) -> list[str]:
        return sorted(str(k) for k in [*dask_worker.data, *dask_worker.state.actors] if str(k).startswith("nnpipe"))

    return client.run(keys)


def test_a_killed_driver_leaves_nothing_running(tmp_path: Path):
    from nnpipe.deploy.local_prefect import status, stop_server

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = clean_env(tmp_path)
    with local_cluster(2) as cluster, distributed.Client(cluster) as dask_client:
        dask_client.wait_for_workers(2)
        cmd = [str(BIN / "nnpipe"), "train", "--dataset", "digits", "--mode", "local-sgd", "--workers", "2",
               "--epochs", "100000", "--scheduler", cluster.scheduler_address]
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            out = []
            for line in proc.stdout:
                out.append(line)
                if line.startswith("epoch 3/"):
                    break
            else:
                pytest.fail(f"nnpipe exited before training: {proc.wait()} {''.join(out)[-3000:]}")
            assert any(held_keys(dask_client).values())  # the run's shards and trainers are there
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the driver's whole group: nothing of it outlives the test
            except ProcessLookupError:
                pass
        # The workers drop a dead driver's shards and trainers (its client is gone).
        deadline = time.monotonic() + 30
        while any((held := held_keys(dask_client)).values()):
            assert time.monotonic() < deadline, held
            time.sleep(0.5)

    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    (run,) = c.search_runs([e.experiment_id for e in c.search_experiments()])
    assert run.info.status == "RUNNING"  # nothing ended it: the driver had no chance
    flow_run_id = run.data.tags["nnpipe.prefect.flow_run_id"]

    # The next command in that store, whatever it is, ends it: FAILED, with why.
    models = subprocess.run([str(BIN / "nnpipe"), "models"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert models.returncode == 0, models.stderr[-3000:]
    assert f"run {run.info.run_name} ({run.info.run_id}) was still RUNNING; ended it FAILED: the driver process " \
           f"died (pid {proc.pid} " in models.stderr, models.stderr[-3000:]
    assert models.stderr.count("ended it FAILED") == 1
    after = c.get_run(run.info.run_id)
    assert after.info.status == "FAILED" and after.info.end_time is not None
    assert after.data.tags["nnpipe.failure"].startswith("the driver process died")
    assert f"--resume-from {run.info.run_id}" in after.data.tags["nnpipe.failure"]

    # The next flow ends its Prefect flow run Crashed (models has no Prefect at hand); its own run is not touched.
    try:
        again = subprocess.run([str(BIN / "nnpipe"), "train", "--dataset", "iris", "--epochs", "2"], cwd=tmp_path,
                               env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        assert f"Prefect flow run {flow_run_id} ended Crashed: the driver process died" in again.stdout + again.stderr
        api = status(tmp_path / ".prefect")["api"]
        with urllib.request.urlopen(f"{api}/flow_runs/{flow_run_id}", timeout=30) as r:
            state = json.loads(r.read())["state"]
        assert state["type"] == "CRASHED" and state["message"].startswith("the driver process died"), state
    finally:
        stop_server(tmp_path / ".prefect")
    statuses = sorted(r.info.status for r in c.search_runs([e.experiment_id for e in c.search_experiments()]))
    assert "RUNNING" not in statuses and statuses.count("FAILED") == 1, statuses
