"""A deployment with a short interval schedule triggers a real run: `nnpipe schedule` with no server set up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from nnpipe.deploy.local_prefect import stop_server
from tests.flows.conftest import BIN, clean_env, default_sigint

pytestmark = pytest.mark.server


def completed_runs(api: str) -> list[dict]:
    body = json.dumps({"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}}).encode()
    req = urllib.request.Request(f"{api}/flow_runs/filter", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_interval_schedule_runs_the_pipeline(tmp_path: Path):
    from mlflow import MlflowClient

    log = open(tmp_path / "schedule.log", "w")
    proc = subprocess.Popen([str(BIN / "nnpipe"), "schedule", "-d", "nightly-iris", "--interval", "5"], cwd=tmp_path,
                            env=clean_env(tmp_path), stdout=subprocess.PIPE, stderr=log, text=True,
                            start_new_session=True, preexec_fn=default_sigint)
    try:
        api = None
        deadline = time.monotonic() + 240
        while api is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, (tmp_path / "schedule.log").read_text()[-3000:]
            if line.startswith("Prefect API:"):
                api = line.split(":", 1)[1].strip()
        assert api, "nnpipe schedule never reported its Prefect API"
        runs = []
        while not runs and time.monotonic() < deadline + 180:
            assert proc.poll() is None, (tmp_path / "schedule.log").read_text()[-3000:]
            runs = completed_runs(api)
            time.sleep(2)
        assert runs, "no scheduled flow run completed"
        run = runs[0]
        assert run["deployment_id"] and run["auto_scheduled"]
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        finished = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
                    if r.info.status == "FINISHED"]
        assert finished, "the scheduled flow run left no finished MLflow run"
        assert str(client.get_model_version_by_alias("nnpipe-iris", "champion").version) == "1"
        # the flow run says what it trained and what it became; the deployment limits overlaps
        assert run["name"].startswith("iris-single-64x32"), run["name"]
        with urllib.request.urlopen(f"{api}/deployments/{run['deployment_id']}", timeout=10) as r:
            deployment = json.loads(r.read())
        limit = (deployment.get("global_concurrency_limit") or {}).get("limit") or deployment.get("concurrency_limit")
        assert limit == 1, deployment
        assert deployment["concurrency_options"]["collision_strategy"] == "CANCEL_NEW", deployment
        # one SIGTERM (what a service manager sends) stops it cleanly
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, (tmp_path / "schedule.log").read_text()[-3000:]
        assert "SIGTERM: stopping" in out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # the command pauses its schedule; the shared server stays
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        stop_server(tmp_path / ".prefect")
        log.close()
