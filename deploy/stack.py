"""A local stack of real processes on 127.0.0.1: Dask, MLflow, Prefect server and a Prefect worker.

    python -m nnpipe.deploy.stack up [--workers 2] [--backend-store-uri postgresql://...] [--state-dir .nnpipe-stack]
    python -m nnpipe.deploy.stack up --production   # PostgreSQL, S3 store, TLS Dask, Prometheus (deploy/production.py)
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
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from nnpipe.deploy import interrupted
from nnpipe.deploy import production as prod
from nnpipe.deploy.processes import (
    BIN, QUIET_ENV, REPO, free_port, pid_alive, spawn, stop, supervised, wait_http, wait_port,
)
from nnpipe.deploy.services import start_prefect_server, start_serve, wait_dask_workers, write_prometheus_config

__all__ = ["BIN", "REPO", "down", "env_lines", "free_port", "main", "status", "up"]

POOL = "nnpipe-local"


ORDER = ("nnpipe-serve", "prometheus", "prefect-worker", "prefect-server", "mlflow", "dask-workers", "dask-scheduler", "s3", "postgres")
# PostgreSQL's SIGTERM is a "smart" shutdown that waits for every client; SIGINT rolls back and stops.
STOP_SIGNALS = {"postgres": signal.SIGINT}
# postgres: a checkpoint on shutdown; s3: rclone drains keep-alive connections (its objects are files already);
# prefect-worker: its flow runs (sessions of their own) are stopped with it (processes.stop) and get time to
# end their MLflow runs while the servers are still up (Prefect's worker itself waits 30 s for them)
STOP_TIMEOUTS = {"postgres": 60, "s3": 5, "prefect-worker": 45}


def up(state: Path, workers: int = 2, backend_store_uri: str | None = None, ui: bool = True, timeout: float = 240,
       production: bool = False, serve: str | None = None) -> dict[str, Any]:
    """Start every process, wait until each answers, and write ``<state>/stack.json``.

    ``serve``: a registered model name; ``nnpipe serve`` then follows its champion
    (answering 503 until it has one) and Prometheus scrapes it, on either stack.

    ``production``: PostgreSQL, an S3 store, TLS Dask and Prometheus (:mod:`nnpipe.deploy.production`).
    """
    state = state.resolve()
    state.mkdir(parents=True, exist_ok=True)
    if any(pid_alive(int(p.read_text())) for p in (state / "pids").glob("*.pid")):
        raise RuntimeError(f"a stack is already running from {state}; run `python -m nnpipe.deploy.stack down --state-dir {state}` first")
    if production or (state / "ports.json").exists():
        try:
            info = prod.up(state, workers, ui=ui, timeout=timeout, serve=serve)
        except BaseException:
            down(state)
            raise
        (state / "stack.json").write_text(json.dumps(info, indent=2))
        return info
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
            info["serve"] = start_serve(state, serve, free_port(), info["mlflow_uri"], timeout)
            info["metrics"]["serve"] = f"{info['serve']}/metrics"
        info["prometheus_config"] = str(write_prometheus_config(state, info["metrics"]))
        spawn(state, "prefect-worker", supervised([str(BIN / "prefect"), "worker", "start", "--pool", POOL,
                                                   "--type", "process"]), env=worker_env, cwd=REPO)
        info["work_pool"] = POOL
        wait_dask_workers(info["dask_address"], workers, timeout)
    except BaseException:
        down(state)
        raise
    (state / "stack.json").write_text(json.dumps(info, indent=2))
    return info


def down(state: Path, report: Callable[[str], None] | None = None) -> list[str]:
    """Stop every process of the stack (worker first, databases last); returns the names that were running.

    Flow runs still training on the worker are stopped with it, before any
    server, and then marked as stopped by ``down`` (:mod:`nnpipe.deploy.interrupted`);
    ``report`` gets one line per run so marked.
    """
    training = interrupted.flow_run_processes(state)
    stopped = []
    for name in ORDER:
        if stop(state, name, timeout=STOP_TIMEOUTS.get(name, 20), sig=STOP_SIGNALS.get(name, signal.SIGTERM)):
            stopped.append(name)
        if name == "prefect-worker" and training:
            try:
                lines = interrupted.end_interrupted(state, training)
            except Exception as exc:  # never keep the stack up for this: the next flow's orphan sweep ends them
                lines = [f"could not mark the interrupted runs ({type(exc).__name__}: {exc}); "
                         "the next flow run ends them FAILED"]
            for line in lines:
                (report or (lambda _: None))(f"stopped while training: {line}")
    (state / "stack.json").unlink(missing_ok=True)
    return stopped


def status(state: Path) -> dict[str, str]:
    """``running`` / ``stopped`` per process."""
    out = {}
    production = (state / "ports.json").exists()
    for name in reversed(ORDER):
        pid_file = state / "pids" / f"{name}.pid"
        if not production and name in ("prometheus", "s3", "postgres"):
            continue
        if name == "nnpipe-serve" and not pid_file.exists():  # only started with --serve
            continue
        out[name] = "running" if pid_file.exists() and pid_alive(int(pid_file.read_text())) else "stopped"
    return out


def env_lines(state: Path) -> list[str]:
    if not (state / "stack.json").exists():
        raise RuntimeError(f"no stack is running from {state}; start one with "
                           f"`python -m nnpipe.deploy.stack up --state-dir {state}`")
    info = json.loads((state / "stack.json").read_text())
    if "client_env" in info:
        return [f"export {k}={v}" for k, v in info["client_env"].items()]
    return [f"export PREFECT_API_URL={info['prefect_api_url']}", f"export MLFLOW_TRACKING_URI={info['mlflow_uri']}",
            f"export DASK_SCHEDULER_ADDRESS={info['dask_address']}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nnpipe.deploy.stack", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("up", "down", "status", "env"))
    parser.add_argument("--state-dir", type=Path, default=Path(".nnpipe-stack"))
    parser.add_argument("--workers", type=int, default=2, help="Dask worker processes")
    parser.add_argument("--backend-store-uri", default=None, help="MLflow store, e.g. postgresql://user:pw@host/db (default SQLite in the state dir)")
    parser.add_argument("--production", action="store_true",
                        help="PostgreSQL, an S3 object store, TLS Dask, Prometheus (kept for later `up`s of this state dir)")
    parser.add_argument("--no-ui", action="store_true", help="Prefect server without its UI (starts faster)")
    parser.add_argument("--timeout", type=float, default=240)
    parser.add_argument("--serve", metavar="MODEL", default=None,
                        help="also run `nnpipe serve MODEL` (follows its champion; 503 until there is one)")
    args = parser.parse_args(argv)
    state = args.state_dir.resolve()
    try:
        if args.command == "up":
            info = up(state, args.workers, args.backend_store_uri, ui=not args.no_ui, timeout=args.timeout,
                      production=args.production, serve=args.serve)
            print(json.dumps(info, indent=2))
            print("\n".join(env_lines(state)))
        elif args.command == "down":
            print("stopped: " + (", ".join(down(state, report=print)) or "nothing was running"))
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
