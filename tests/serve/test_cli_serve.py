"""``nnpipe serve`` as a real process with 2 workers: a rollback from another process reaches clients in seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest
from typer.testing import CliRunner

from nnpipe.cli import app
from tests.serve.conftest import post, split_body, wait_for
from tests.tracking.helpers import NNPIPE, child_env, free_port, start_server, stop

pytestmark = pytest.mark.server
SWITCH_WINDOW = 5.0


@pytest.fixture(scope="module")
def server(registry, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    port = free_port()
    cmd = [NNPIPE, "serve", registry.name, "--port", str(port), "--workers", "2", "--poll", "0.5",
           "--report-every", "2"]
    proc = start_server(cmd, f"http://127.0.0.1:{port}/ping", log, child_env(registry.uri), registry.root)
    yield proc, f"http://127.0.0.1:{port}", log
    stop(proc)


class Client(threading.Thread):
    """Loops requests and records (time, status, version) of every answer, or the exception."""

    def __init__(self, url: str, body: dict):
        super().__init__(daemon=True)
        self.url, self.body = url, body
        self.answers: list[tuple[float, int, str | None]] = []
        self.errors: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                status, headers, _ = post(self.url + "/invocations", self.body, timeout=10)
                self.answers.append((time.monotonic(), status, headers.get("X-Model-Version")))
            except Exception as exc:  # a refused or dropped connection is a failed request
                self.errors.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.01)

    def latest(self) -> str | None:
        return self.answers[-1][2] if self.answers else None


def nnpipe(root, uri, *args: str) -> float:
    """Run an nnpipe command to completion; the monotonic time it finished."""
    out = subprocess.run([NNPIPE, *args], cwd=root, env=child_env(uri), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return time.monotonic()


def test_promote_and_rollback_reach_clients_within_seconds_with_no_failed_request(registry, server):
    proc, url, log = server
    client = Client(url, split_body(registry.splits.raw_test[:3], registry.columns))
    client.start()
    try:
        wait_for(lambda: client.latest() == "1", 30, "answers from v1")
        done = nnpipe(registry.root, registry.uri, "promote", registry.name, "2", "--reason", "test")
        took = wait_for(lambda: client.latest() == "2", SWITCH_WINDOW, "answers from v2 after promote")
        done = nnpipe(registry.root, registry.uri, "rollback", registry.name, "--reason", "v2 misbehaves")
        took = max(took, wait_for(lambda: client.latest() == "1", SWITCH_WINDOW, "answers from v1 after rollback"))
        time.sleep(max(0.0, done + SWITCH_WINDOW + 1.5 - time.monotonic()))  # both workers, past the window
    finally:
        client.halt.set()
        client.join(10)
    assert not client.errors, client.errors[:3]
    assert {status for _, status, _ in client.answers} == {200}
    after = [v for t, _, v in client.answers if t > done + SWITCH_WINDOW]
    assert after and set(after) == {"1"}, "an answer after the window named another version than the rollback's"
    assert took < SWITCH_WINDOW
    assert "now serving 'iris-serve' v1" in log.read_text()


def test_drift_command_reads_the_running_server_and_mlflow(registry, server):
    proc, url, _ = server
    for _ in range(5):
        assert post(url + "/invocations", split_body(registry.splits.raw_test, registry.columns))[0] == 200
    runner = CliRunner()
    live = runner.invoke(app, ["drift", registry.name, "--url", url])
    assert live.exit_code == 0, live.output
    assert registry.columns[0] in live.output and "live, from" in live.output
    time.sleep(3)  # --report-every 2: the workers log their drift to the champion's run
    logged = runner.invoke(app, ["drift", registry.name, "--tracking-uri", registry.uri])
    assert logged.exit_code == 0, logged.output
    assert "MLflow metrics live/shift" in logged.output and "0 live row" not in logged.output


def test_sigterm_drains_and_exits_zero(registry, server):
    proc, url, log = server
    big = split_body(registry.splits.raw_test.repeat(60, axis=0), registry.columns)  # ~1800 rows a request
    results: list[int | str] = []

    def one() -> None:
        try:
            results.append(post(url + "/invocations", big, timeout=30)[0])
        except Exception as exc:
            results.append(type(exc).__name__)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(60) == 0, log.read_text()[-3000:]
    for t in threads:
        t.join(30)
    answered = [r for r in results if isinstance(r, int)]
    assert answered and set(answered) == {200}, results  # every request that got in was answered in full
    assert "Finished server process" in log.read_text()


def test_bad_options_fail_with_one_line_before_serving(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # ./mlflow.db, which does not exist
    runner = CliRunner()
    out = runner.invoke(app, ["serve", "m", "--shadow", "champion"])
    assert out.exit_code == 1 and "is the served alias itself" in out.output
    out = runner.invoke(app, ["serve", "m", "--alias", "@champion"])
    assert out.exit_code == 1 and "no '@'" in out.output
    out = runner.invoke(app, ["serve", "m"])
    assert out.exit_code == 1 and "no MLflow store at" in out.output
    assert not (tmp_path / "mlflow.db").exists()
