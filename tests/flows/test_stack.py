"""The local stack: real Dask, MLflow, Prefect server and worker processes; deploy, trigger, check, stop."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nnpipe.deploy.stack import REPO, down, status
from tests.flows.conftest import clean_env

pytestmark = pytest.mark.server

TRIGGER = """
import sys
from prefect.deployments import run_deployment
from nnpipe.deploy.deployments import DEPLOYMENTS, deploy_to_pool
chosen = [d for d in DEPLOYMENTS if d.name == "nightly-breast-cancer-sync"]
(dep_id,) = deploy_to_pool("nnpipe-local", chosen)
config = chosen[0].parameters()["config"]
config["train"]["epochs"] = 5  # a short run: the point is where it runs and what it records
run = run_deployment("nnpipe-train/nightly-breast-cancer-sync", parameters={"config": config}, timeout=400)
print("STATE", run.state.type.value, run.state.message)
"""


def test_stack_up_deploy_run_down(tmp_path: Path):
    from mlflow import MlflowClient

    state = tmp_path / "stack"
    env = clean_env(tmp_path)
    up = subprocess.run([sys.executable, "-m", "nnpipe.deploy.stack", "up", "--state-dir", str(state), "--workers", "2",
                         "--no-ui"], cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    try:
        assert up.returncode == 0, up.stderr + "".join(p.read_text()[-1500:] for p in (state / "logs").glob("*.log"))
        assert set(status(state).values()) == {"running"}
        exports = dict(line.removeprefix("export ").split("=", 1) for line in up.stdout.splitlines()
                       if line.startswith("export "))
        run = subprocess.run([sys.executable, "-c", TRIGGER], cwd=REPO, env={**env, **exports}, capture_output=True,
                             text=True, timeout=500)
        assert "STATE COMPLETED" in run.stdout, run.stdout[-2000:] + run.stderr[-3000:] + (
            state / "logs" / "prefect-worker.log").read_text()[-3000:]
        # The worker's flow run tracked to the stack's MLflow server and trained on the stack's Dask cluster.
        client = MlflowClient(tracking_uri=exports["MLFLOW_TRACKING_URI"], registry_uri=exports["MLFLOW_TRACKING_URI"])
        version = client.get_model_version_by_alias("nnpipe-breast_cancer", "champion")
        assert str(version.version) == "1"
        mlflow_run = client.get_run(version.run_id)
        assert mlflow_run.info.status == "FINISHED"
        assert mlflow_run.data.tags["dask.address"] == exports["DASK_SCHEDULER_ADDRESS"]
        assert mlflow_run.data.params["mode"] == "sync"
        # Monitoring: the Dask dashboard and the MLflow server answer on /metrics, and the
        # written Prometheus config scrapes them and the training driver's port.
        info = json.loads((state / "stack.json").read_text())
        for job, prefix in (("dask", "dask_scheduler"), ("mlflow", "mlflow")):
            with urllib.request.urlopen(info["metrics"][job], timeout=30) as r:
                families = {f.name for f in text_string_to_metric_families(r.read().decode())}
            assert any(name.startswith(prefix) for name in families), (job, sorted(families)[:20])
        config = Path(info["prometheus_config"]).read_text()
        for job, url in info["metrics"].items():
            assert f"job_name: {job}" in config and urllib.parse.urlsplit(url).netloc in config
    finally:
        stopped = down(state)
    assert "prefect-server" in stopped and "dask-scheduler" in stopped
    assert set(status(state).values()) == {"stopped"}
