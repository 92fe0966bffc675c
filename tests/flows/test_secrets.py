"""A tracking URI with a user and password: the password reaches no MLflow param or tag, no Prefect
flow-run parameter and no line nnpipe prints, and the run still tracks (the plain test server ignores it)."""

from __future__ import annotations

import asyncio

import pytest
from typer.testing import CliRunner

pytestmark = [pytest.mark.server, pytest.mark.usefixtures("prefect_harness")]
SECRET = "S3cretPW"


def test_password_in_the_tracking_uri_stays_secret(mlflow_server, monkeypatch, tmp_path):  # noqa: F811
    from mlflow import MlflowClient

    from nnpipe import tracking
    from nnpipe.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    monkeypatch.setenv("NNPIPE_LOCK_DIR", str(tmp_path))
    uri = mlflow_server.replace("http://", f"http://alice:{SECRET}@")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())  # the session's test server, not a local one
    try:
        result = CliRunner().invoke(app, ["train", "--epochs", "2", "--model-name", "secret-test"])
    finally:
        tracking.reset()
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output and "MLflow run:" in result.output

    c = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    run_id = [line.split()[-1] for line in result.output.splitlines() if line.startswith("MLflow run:")][0]
    run = c.get_run(run_id)
    assert SECRET not in repr(run.data.params) + repr(run.data.tags)
    assert run.data.params["tracking_uri"] == mlflow_server

    from prefect.client.orchestration import get_client

    async def parameters() -> str:
        async with get_client() as client:
            runs = await client.read_flow_runs(limit=200)
        return repr([r.parameters for r in runs])

    params = asyncio.run(parameters())
    assert "secret-test" in params and SECRET not in params
