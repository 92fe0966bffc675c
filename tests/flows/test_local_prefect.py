"""The local Prefect server: commands started together on a fresh machine share one server."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from nnpipe.deploy import local_prefect
from tests.flows.conftest import clean_env

pytestmark = pytest.mark.server

START = "from nnpipe.deploy.local_prefect import ensure_server; print(ensure_server(echo=lambda s: None)['api'])"


def test_four_commands_at_once_start_one_server_and_reuse_it(tmp_path: Path):
    env = clean_env(tmp_path)
    home = Path(env["PREFECT_HOME"])
    procs = [subprocess.Popen([sys.executable, "-c", START], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    try:
        outs = [p.communicate(timeout=300) for p in procs]
        assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
        apis = {out.strip() for out, _ in outs}
        assert len(apis) == 1, apis  # one server, one database initialisation
        assert not any("Traceback" in err for _, err in outs), [err for _, err in outs]
        info = local_prefect.status(home)
        assert info is not None and info["api"] in apis
        # The UI in a browser calls the API at this port (not Prefect's default 4200).
        with urllib.request.urlopen(f"{info['ui']}/ui-settings", timeout=30) as r:
            assert json.loads(r.read())["api_url"] == info["api"]
        # A later command finds it without starting anything.
        again = subprocess.run([sys.executable, "-c", START], env=env, capture_output=True, text=True, timeout=60)
        assert again.stdout.strip() in apis
        assert sorted(p.name for p in (home / "nnpipe-server" / "pids").glob("*.pid")) == ["idle-watch.pid", "prefect-server.pid"]
    finally:
        assert local_prefect.stop_server(home) is True
    assert local_prefect.status(home) is None
    assert local_prefect.stop_server(home) is False


def test_a_dead_api_url_is_reported_at_once():
    assert local_prefect.api_answers("http://127.0.0.1:9/api", tries=1, timeout=1) is False


def test_an_unused_server_stops_itself_after_the_idle_time_and_not_under_a_client(tmp_path: Path):
    import time

    from nnpipe.deploy import idle_watch
    from nnpipe.deploy.stack import pid_alive

    env = clean_env(tmp_path, NNPIPE_PREFECT_IDLE_MINUTES="0.1")  # 6 s, checked every second
    home = Path(env["PREFECT_HOME"])
    state = local_prefect.state_dir(home)
    try:
        with idle_watch.lease(state):  # this test is a client from before the server starts
            start = subprocess.run([sys.executable, "-c", START], env=env, capture_output=True, text=True, timeout=300)
            assert start.returncode == 0, start.stderr
            info = local_prefect.status(home)
            assert info is not None and info["idle_seconds"] == 6
            shown = subprocess.run([str(Path(sys.executable).parent / "nnpipe"), "server", "status"], env=env,
                                   capture_output=True, text=True, timeout=60)
            assert "stops itself at" in shown.stdout and "after 0.1 min idle" in shown.stdout, shown.stdout
            time.sleep(12)  # twice the idle time, with a client: still up
            assert local_prefect.status(home) is not None
        deadline = time.monotonic() + 60
        while pid_alive(info["pid"]) and time.monotonic() < deadline:
            time.sleep(1)
        assert not pid_alive(info["pid"]), "the idle server did not stop"
        assert local_prefect.status(home) is None
        log_file = state / "logs" / f"{idle_watch.NAME}.log"
        while "stopped the Prefect server" not in log_file.read_text() and time.monotonic() < deadline + 30:
            time.sleep(0.5)  # the watch writes its line once the server's process has gone
        log = log_file.read_text()
        assert "stopped the Prefect server" in log and "after 0.1 min without use" in log
    finally:
        local_prefect.stop_server(home)


@pytest.mark.parametrize(("env_value", "expected"), [(None, 120), ("33", 33)])
def test_an_ephemeral_server_gets_time_to_start_unless_the_user_says_otherwise(monkeypatch, env_value, expected):
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as startup

    from nnpipe.cli.common import prefect_api

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("NNPIPE_PREFECT_SERVER", "ephemeral")
    if env_value is None:
        monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", raising=False)
    else:
        monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", env_value)
    with prefect_api() as api:
        assert api is None
        assert startup.value() == expected
