"""The services both stacks start the same way: a Prefect server, the Prometheus config, the Dask workers' roll call."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from nnpipe.deploy.processes import BIN, QUIET_ENV, free_port, spawn, wait_http, wait_port


def ui_api_env(api: str) -> dict[str, str]:
    """Where the Prefect UI's browser code calls the API: unset, it calls 127.0.0.1:4200 whatever the port."""
    return {"PREFECT_SERVER_UI_API_URL": api, "PREFECT_UI_API_URL": api}


def prefect_server_args(port: int) -> list[str]:
    return [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]


def start_prefect_server(state: Path, port: int | None = None, ui: bool = True, timeout: float = 240,
                         database_url: str | None = None, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """A real (non-ephemeral) Prefect server, with its scheduler, on 127.0.0.1; returns it and its API URL.

    ``database_url``: its database (``postgresql+asyncpg://...``, no password: ``PGPASSFILE`` in ``env``);
    default SQLite under ``<state>/prefect``.
    """
    port = port or free_port()
    extra = env
    env: dict[str, str | None] = {"PREFECT_HOME": str(state / "prefect"), "PREFECT_UI_ENABLED": "true" if ui else "false",
           **ui_api_env(f"http://127.0.0.1:{port}/api"),
           # new deployments get their runs scheduled within seconds, not the default minute
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "10"}
    for key in ("PREFECT_API_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL"):
        env[key] = None  # a server of its own, with its own database
    if database_url:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
    env.update(extra or {})
    proc = spawn(state, "prefect-server", prefect_server_args(port), env=env)
    api = f"http://127.0.0.1:{port}/api"
    wait_http(f"{api}/health", timeout, proc, state / "logs" / "prefect-server.log")
    return proc, api


def start_serve(state: Path, model: str, port: int, tracking_uri: str, timeout: float) -> str:
    """``nnpipe serve MODEL`` on ``port``, following its champion in ``tracking_uri``; returns its URL.

    It answers 503 until the model has a champion. The tracking server proxies
    artefacts, so the server needs no object-store credentials.
    """
    served = spawn(state, "nnpipe-serve", [str(BIN / "nnpipe"), "serve", model, "--port", str(port)],
                   env={"MLFLOW_TRACKING_URI": tracking_uri})
    wait_port(port, timeout, served)
    return f"http://127.0.0.1:{port}"


def write_prometheus_config(state: Path, targets: dict[str, str]) -> Path:
    """``<state>/prometheus.yml``: one scrape job per ``/metrics`` URL (dask, mlflow, nnpipe training)."""
    from urllib.parse import urlsplit

    lines = ["# Written by `python -m nnpipe.deploy.stack up`; run: prometheus --config.file " + str(state / "prometheus.yml"),
             "global:", "  scrape_interval: 5s", "scrape_configs:"]
    for job, url in targets.items():
        parts = urlsplit(url)
        lines += [f"  - job_name: {job}", f"    metrics_path: {parts.path}",
                  "    static_configs:", f"      - targets: ['{parts.netloc}']"]
    path = state / "prometheus.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_dask_workers(address: str, n: int, timeout: float, env: dict[str, str] | None = None) -> None:
    """Wait until ``n`` workers joined the scheduler at ``address``.

    In a child process, so that ``env`` (Dask's TLS variables) is read as Dask reads it at import.
    """
    code = ("import sys; from nnpipe.distributed.cluster import connect, wait_for_workers\n"
            "with connect(address=sys.argv[1]) as c: wait_for_workers(c, int(sys.argv[2]), timeout=float(sys.argv[3]))")
    done = subprocess.run([sys.executable, "-c", code, address, str(n), str(timeout)], capture_output=True, text=True,
                          env={**os.environ, **QUIET_ENV, **(env or {})}, timeout=timeout + 60)
    if done.returncode != 0:
        raise RuntimeError(f"{address}: {n} Dask workers did not join: {done.stderr.strip().splitlines()[-1:]}")
