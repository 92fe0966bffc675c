"""SIGINT and SIGTERM sent to a real ``nnpipe train`` process: a message, the run KILLED, the champion untouched."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.flows.conftest import BIN, clean_env, default_sigint

pytestmark = pytest.mark.server
NAME = "sig"


@pytest.fixture(scope="module")
def user_home(tmp_path_factory) -> Iterator[Path]:
    """One user's HOME for both signals: the local Prefect server nnpipe starts is stopped at the end."""
    home = tmp_path_factory.mktemp("home")
    yield home
    subprocess.run([str(BIN / "nnpipe"), "server", "stop"], env=clean_env(home), capture_output=True, timeout=60)


@pytest.fixture
def store_with_champion(tmp_path: Path) -> str:
    """A SQLite store whose model NAME has v1 as champion (made with the tracking layer, in seconds)."""
    from nnpipe import tracking
    from nnpipe.data import load_dataset, split_and_scale
    from tests.tracking.helpers import train_logged

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.configure(uri)
    try:
        ds = load_dataset("iris")
        version, _, _ = train_logged(NAME, ds, split_and_scale(ds), experiment="nnpipe", epochs=3)
        assert tracking.promote_if_better(NAME, version).promoted
    finally:
        tracking.reset()
    return uri


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_ends_the_run_killed_and_leaves_the_champion(signum, store_with_champion, user_home, tmp_path: Path):
    from mlflow import MlflowClient

    (tmp_path / "long.toml").write_text("epochs = 100000\npatience = 100000\n")
    cmd = [str(BIN / "nnpipe"), "train", "--model-name", NAME, "--config", str(tmp_path / "long.toml")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=clean_env(user_home), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=default_sigint)
    try:
        deadline = time.monotonic() + 300
        for line in proc.stdout:  # plain progress lines: wait until training is under way
            if line.startswith("epoch 3/"):
                break
            assert time.monotonic() < deadline, "training never started"
        else:
            pytest.fail(f"nnpipe exited before training: {proc.wait()} {proc.stderr.read()[-3000:]}")
        os.kill(proc.pid, signum)  # the process only, as `kill PID` or Ctrl-C in its terminal would
        proc.stdout.read()
        err = proc.stderr.read()
        code = proc.wait(timeout=90)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of its group (see the report)
        except ProcessLookupError:
            pass
    assert code == 130, err[-3000:]
    assert "error: interrupted" in err and "KILLED" in err and "Traceback" not in err, err[-3000:]
    c = MlflowClient(tracking_uri=store_with_champion, registry_uri=store_with_champion)
    runs = c.search_runs([c.get_experiment_by_name("nnpipe").experiment_id], order_by=["start_time DESC"])
    assert runs[0].info.status == "KILLED"
    assert str(c.get_model_version_by_alias(NAME, "champion").version) == "1"
    assert [str(v.version) for v in c.search_model_versions(f"name='{NAME}'")] == ["1"]
