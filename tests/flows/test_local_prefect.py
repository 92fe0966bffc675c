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
        assert len(list((home / "nnpipe-server" / "pids").glob("*.pid"))) == 1
    finally:
        assert local_prefect.stop_server(home) is True
    assert local_prefect.status(home) is None
    assert local_prefect.stop_server(home) is False


def test_a_dead_api_url_is_reported_at_once():
    assert local_prefect.api_answers("http://127.0.0.1:9/api", tries=1, timeout=1) is False
