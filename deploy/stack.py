"""A local stack of real processes on 127.0.0.1: Dask, MLflow, Prefect server and a Prefect worker.

    python -m nnpipe.deploy.stack up [--workers 2] [--backend-store-uri postgresql://...] [--state-dir .nnpipe-stack]
    python -m nnpipe.deploy.stack status
    python -m nnpipe.deploy.stack env        # export lines for a shell: PREFECT_API_URL, MLFLOW_TRACKING_URI, ...
    python -m nnpipe.deploy.stack down

Each process runs in its own session with a pid file and a log under the
state directory, so ``down`` stops exactly what ``up`` started.

Monitoring: the Dask scheduler's dashboard serves Prometheus metrics at
``/metrics``, the MLflow server runs with ``--expose-prometheus`` (``/metrics``
on its port), and flow runs on the worker serve nnpipe's live training
metrics on ``NNPIPE_METRICS_PORT`` while they train. ``up`` writes
``<state>/prometheus.yml`` scraping all three: ``prometheus --config.file
<state>/prometheus.yml``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
POOL = "nnpipe-local"
QUIET_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "MLFLOW_ENABLE_TELEMETRY": "false"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Poll ``url`` until it answers 200; fail early (quoting the log's tail) if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{url}: process exited with code {proc.returncode} before it answered\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout:g} s" + (f"; see {log}" if log else ""))


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"port {port}: process exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")


def spawn(state: Path, name: str, args: list[str], env: dict[str, str | None] | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """Start ``args`` in a new session, logging to ``<state>/logs/<name>.log``, pid in ``<state>/pids/<name>.pid``."""
    (state / "logs").mkdir(parents=True, exist_ok=True)
    (state / "pids").mkdir(parents=True, exist_ok=True)
    log = open(state / "logs" / f"{name}.log", "ab")
    full = {**os.environ, **QUIET_ENV, **(env or {})}
    full = {k: v for k, v in full.items() if v is not None}  # None: unset for the child
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=full,
                            cwd=str(cwd or state), start_new_session=True)
    (state / "pids" / f"{name}.pid").write_text(str(proc.pid))
    return proc


def ui_api_env(api: str) -> dict[str, str]:
    """Where the Prefect UI's browser code calls the API: unset, it calls 127.0.0.1:4200 whatever the port."""
    return {"PREFECT_SERVER_UI_API_URL": api, "PREFECT_UI_API_URL": api}


def prefect_server_args(port: int) -> list[str]:
    return [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]


def start_prefect_server(state: Path, port: int | None = None, ui: bool = True, timeout: float = 240) -> tuple[subprocess.Popen, str]:
    """A real (non-ephemeral) Prefect server, with its scheduler, on 127.0.0.1; returns it and its API URL."""
    port = port or free_port()
    env: dict[str, str | None] = {"PREFECT_HOME": str(state / "prefect"), "PREFECT_UI_ENABLED": "true" if ui else "false",
           **ui_api_env(f"http://127.0.0.1:{port}/api"),
           # new deployments get their runs scheduled within seconds, not the default minute
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "10"}
    for key in ("PREFECT_API_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL"):
        env[key] = None  # a server of its own, with its own database
    proc = spawn(state, "prefect-server", prefect_server_args(port), env=env)
    api = f"http://127.0.0.1:{port}/api"
    wait_http(f"{api}/health", timeout, proc, state / "logs" / "prefect-server.log")
    return proc, api


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def stop(state: Path, name: str, timeout: float = 20) -> bool:
    """Stop the process group started as ``name`` (SIGTERM, then SIGKILL); True if it was running."""
    pid_file = state / "pids" / f"{name}.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text())
    running = pid_alive(pid)
    if running:
        try:
            os.killpg(pid, signal.SIGTERM)  # the session we created: the process and its children
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid_alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    pid_file.unlink(missing_ok=True)
    return running


ORDER = ("nnpipe-serve", "prefect-worker", "prefect-server", "mlflow", "dask-workers", "dask-scheduler")


def up(state: Path, workers: int = 2, backend_store_uri: str | None = None, ui: bool = True, timeout: float = 240,
       serve: str | None = None) -> dict[str, Any]:
    """Start every process, wait until each answers, and write ``<state>/stack.json``.

    ``serve``: a registered model name; ``nnpipe serve`` then follows its champion
    (answering 503 until it has one) and Prometheus scrapes it.
    """
    state = state.resolve()
    state.mkdir(parents=True, exist_ok=True)
    if (state / "stack.json").exists() and any(pid_alive(int(p.read_text())) for p in (state / "pids").glob("*.pid")):
        raise RuntimeError(f"a stack is already running from {state}; run `python -m nnpipe.deploy.stack down --state-dir {state}` first")
    dask_port, mlflow_port, prefect_port = free_port(), free_port(), free_port()
    dashboard_port, train_metrics_port = free_port(), free_port()
    info: dict[str, Any] = {"state_dir": str(state), "workers": workers}
    try:
        sched = spawn(state, "dask-scheduler", [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port",
                                                str(dask_port), "--dashboard-address", f"127.0.0.1:{dashboard_port}"])
        wait_port(dask_port, timeout, sched)
        info["dask_address"] = f"tcp://127.0.0.1:{dask_port}"
        info["dask_dashboard"] = f"http://127.0.0.1:{dashboard_port}/status"
        spawn(state, "dask-workers", [str(BIN / "dask"), "worker", info["dask_address"], "--nworkers", str(workers),
                                      "--nthreads", "1", "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"],
              env={"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        store = backend_store_uri or f"sqlite:///{state / 'mlflow.db'}"
        info["mlflow_backend_store_uri"] = store
        mlflow = spawn(state, "mlflow", [str(BIN / "mlflow"), "server", "--backend-store-uri", store,
                                         "--artifacts-destination", str(state / "mlartifacts"),
                                         "--expose-prometheus", str(state / "mlflow-prometheus"),
                                         "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"],
                       # its GenAI job runner (eight huey processes) has nothing to do for nnpipe
                       env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        info["mlflow_uri"] = f"http://127.0.0.1:{mlflow_port}"
        _, api = start_prefect_server(state, prefect_port, ui=ui, timeout=timeout)
        info["prefect_api_url"] = api
        wait_http(f"{info['mlflow_uri']}/health", timeout, mlflow, state / "logs" / "mlflow.log")
        env = {"PREFECT_API_URL": api, "PREFECT_HOME": str(state / "prefect")}
        subprocess.run([str(BIN / "prefect"), "work-pool", "create", POOL, "--type", "process", "--overwrite"],
                       env={**os.environ, **QUIET_ENV, **env}, check=True, capture_output=True, timeout=timeout)
        # What every flow run on this worker inherits: where to track and where to train.
        worker_env = {**env, "MLFLOW_TRACKING_URI": info["mlflow_uri"], "DASK_SCHEDULER_ADDRESS": info["dask_address"],
                      "NNPIPE_METRICS_PORT": str(train_metrics_port)}
        info["metrics"] = {"dask": f"http://127.0.0.1:{dashboard_port}/metrics",
                           "mlflow": f"{info['mlflow_uri']}/metrics",
                           "nnpipe": f"http://127.0.0.1:{train_metrics_port}/metrics"}
        if serve:
            serve_port = free_port()
            served = spawn(state, "nnpipe-serve", [str(BIN / "nnpipe"), "serve", serve, "--port", str(serve_port)],
                           env={"MLFLOW_TRACKING_URI": info["mlflow_uri"]})
            info["serve"] = f"http://127.0.0.1:{serve_port}"
            info["metrics"]["serve"] = f"{info['serve']}/metrics"
            wait_port(serve_port, timeout, served)
        info["prometheus_config"] = str(write_prometheus_config(state, info["metrics"]))
        spawn(state, "prefect-worker", [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process"],
              env=worker_env, cwd=REPO)
        info["work_pool"] = POOL
        _wait_dask_workers(info["dask_address"], workers, timeout)
    except BaseException:
        down(state)
        raise
    (state / "stack.json").write_text(json.dumps(info, indent=2))
    return info


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


def _wait_dask_workers(address: str, n: int, timeout: float) -> None:
    from nnpipe.distributed.cluster import connect, wait_for_workers

    with connect(address=address) as client:
        wait_for_workers(client, n, timeout=timeout)


def down(state: Path) -> list[str]:
    """Stop every process of the stack (worker first, scheduler last); returns the names that were running."""
    stopped = [name for name in ORDER if stop(state, name)]
    (state / "stack.json").unlink(missing_ok=True)
    return stopped


def status(state: Path) -> dict[str, str]:
    """``running`` / ``stopped`` per process."""
    out = {}
    for name in reversed(ORDER):
        pid_file = state / "pids" / f"{name}.pid"
        out[name] = "running" if pid_file.exists() and pid_alive(int(pid_file.read_text())) else "stopped"
    return out


def env_lines(state: Path) -> list[str]:
    info = json.loads((state / "stack.json").read_text())
    return [f"export PREFECT_API_URL={info['prefect_api_url']}", f"export MLFLOW_TRACKING_URI={info['mlflow_uri']}",
            f"export DASK_SCHEDULER_ADDRESS={info['dask_address']}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nnpipe.deploy.stack", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("up", "down", "status", "env"))
    parser.add_argument("--state-dir", type=Path, default=Path(".nnpipe-stack"))
    parser.add_argument("--workers", type=int, default=2, help="Dask worker processes")
    parser.add_argument("--backend-store-uri", default=None, help="MLflow store, e.g. postgresql://user:pw@host/db (default SQLite in the state dir)")
    parser.add_argument("--no-ui", action="store_true", help="Prefect server without its UI (starts faster)")
    parser.add_argument("--timeout", type=float, default=240)
    parser.add_argument("--serve", metavar="MODEL", default=None,
                        help="also run `nnpipe serve MODEL` (follows its champion; 503 until there is one)")
    args = parser.parse_args(argv)
    state = args.state_dir.resolve()
    try:
        if args.command == "up":
            info = up(state, args.workers, args.backend_store_uri, ui=not args.no_ui, timeout=args.timeout,
                      serve=args.serve)
            print(json.dumps(info, indent=2))
            print("\n".join(env_lines(state)))
        elif args.command == "down":
            print("stopped: " + (", ".join(down(state)) or "nothing was running"))
        elif args.command == "status":
            for name, st in status(state).items():
                print(f"{name:16s} {st}")
        else:
            print("\n".join(env_lines(state)))
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        print(f"error: {str(exc).splitlines()[0]} (logs in {state / 'logs'})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
