"""A real ``mlflow server --app-name basic-auth``: a wrong password is refused in seconds, before any run;
credentials come from MLFLOW_TRACKING_USERNAME/PASSWORD (or the URI) and never reach a parameter."""

from __future__ import annotations

import secrets

import pytest
from typer.testing import CliRunner

from nnpipe import tracking
from nnpipe.cli import app
from nnpipe.tracking.preflight import StoreUnavailable, check_store
from tests.tracking.helpers import MLFLOW, child_env, free_port, start_server, stop

pytestmark = pytest.mark.server
ADMIN = "admin"
PASSWORD = "Correct-Horse-" + secrets.token_hex(6)


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-auth")
    ini = root / "basic_auth.ini"
    ini.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{root / 'auth.db'}\n"
                   f"admin_username = {ADMIN}\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    port = free_port()
    cmd = [MLFLOW, "server", "--app-name", "basic-auth", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--artifacts-destination",
           str(root / "artifacts"), "--workers", "1"]
    env = child_env(MLFLOW_AUTH_CONFIG_PATH=str(ini), MLFLOW_AUTH_ADMIN_PASSWORD=PASSWORD,
                    MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16), MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    url = f"http://127.0.0.1:{port}"
    proc = start_server(cmd, f"{url}/health", root / "server.log", env, root)
    yield url
    stop(proc)


def test_wrong_password_is_refused_before_any_run(auth_server, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-password")
    with pytest.raises(StoreUnavailable, match=r"refused the credentials .* \(HTTP 401\)"):
        check_store(auth_server)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    with pytest.raises(StoreUnavailable, match=r"refused no credentials \(HTTP 401\)"):
        check_store(auth_server)
    # the CLI: one line, exit 1, no password printed, nothing started
    monkeypatch.setenv("MLFLOW_TRACKING_URI", auth_server.replace("http://", f"http://{ADMIN}:S3cretPW@"))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["train"])
    assert result.exit_code == 1, result.output
    assert "refused the credentials" in result.output and "S3cretPW" not in result.output


def test_right_password_from_the_uri_tracks_and_stays_out_of_params(auth_server, monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = auth_server.replace("http://", f"http://{ADMIN}:{PASSWORD}@")
    check_store(uri)  # accepted
    assert tracking.configure(uri) == auth_server  # credentials moved to MLflow's env variables
    from nnpipe.flows.config import build_config

    params = build_config(None, {"tracking_uri": uri}).mlflow_params()
    with tracking.training_run("auth", params) as run:
        run_id = run.info.run_id
    stored = tracking.client().get_run(run_id)
    assert stored.info.status == "FINISHED"
    assert PASSWORD not in repr(stored.data.params) and PASSWORD not in repr(stored.data.tags)
    assert stored.data.params["tracking_uri"] == auth_server  # the credentials went to MLflow's env variables
