"""The production stack's figures: cold start, schedule-to-first-epoch, registry on PostgreSQL vs SQLite, s3 vs local.

Brings up ``python -m nnpipe.deploy.stack up --production`` in a fresh state
directory (timed: cold start to ready), then measures

- from a scheduled run's due time to its training's first epoch (a deployment
  on the work pool with an interval schedule; nobody calls ``run_deployment``);
- registry operations (register a version, set an alias, search versions) on
  the PostgreSQL store against a SQLite file, with 1 and 8 concurrent clients
  (processes), as operations per second;
- ``rows`` rows read from ``s3://`` against the same Parquet parts on local
  disk, trained for one epoch on the stack's TLS cluster: samples/s and the
  driver's peak RSS.

Wrap it in the shared CPU lock so no other measurement shares the cores::

    flock /work/cpu.lock .venv/bin/python bench/bench_production.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OPS = 20  # registry operations of each kind per client


def registry_client(uri: str, name: str, worker: int, env: dict[str, str]) -> float:
    """One client: OPS x (register a version, set an alias, search); returns its wall seconds."""
    os.environ.update(env)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        client.create_registered_model(name)
    except Exception:  # another client made it first
        pass
    t0 = time.perf_counter()
    for i in range(OPS):
        v = client.create_model_version(name, source=f"file:///tmp/m{worker}-{i}", run_id=None)
        client.set_registered_model_alias(name, f"w{worker}", v.version)
        client.search_model_versions(f"name = '{name}'", max_results=20)
    return time.perf_counter() - t0


def registry_rate(uri: str, clients: int, env: dict[str, str]) -> float:
    """Operations per second over ``clients`` concurrent processes (3 operations per step)."""
    name = f"bench-{clients}-{int(time.time() * 1000)}"
    t0 = time.perf_counter()
    with ProcessPoolExecutor(clients) as pool:
        list(pool.map(registry_client, [uri] * clients, [name] * clients, range(clients), [env] * clients))
    return clients * OPS * 3 / (time.perf_counter() - t0)


def write_parts(rows: int, folder: Path, parts: int = 8) -> None:
    import numpy as np
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    per = rows // parts
    for i in range(parts):
        X = rng.standard_normal((per, 10)).astype("float64")
        df = pd.DataFrame(X, columns=[f"f{j}" for j in range(10)])
        df["label"] = np.where(X[:, 0] + X[:, 1] * X[:, 2] > 0, "a", "b")
        df.to_parquet(folder / f"part-{i}.parquet", index=False, row_group_size=50_000)


TRAIN_ONE = """
import json, resource, sys, time
from nnpipe import TrainConfig
from nnpipe.api import train
from nnpipe.sources import open_source
t0 = time.perf_counter()
r = train(open_source(sys.argv[1], "label"), TrainConfig(mode="sync", epochs=1, workers=2, batch_size=1024),
          address=sys.argv[2])
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def train_once(location: str, address: str, env: dict[str, str], rows: int) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", TRAIN_ONE, location, address], env=env, capture_output=True,
                          text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["samples_per_s"] = rows / out["seconds"]
    return out


DEPLOY = """
import sys
from nnpipe.deploy.deployments import Scheduled, deploy_to_pool
d = Scheduled("bench-every-30s", "0 3 * * *", {"dataset": "iris", "epochs": 2, "model_name": "bench-scheduled"})
print(deploy_to_pool(sys.argv[1], [d], interval=30)[0])
"""


def schedule_latency(info: dict, env: dict[str, str]) -> float:
    """Seconds from the first scheduled run's due time to its training's first logged epoch."""
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    done = subprocess.run([sys.executable, "-c", DEPLOY, info["work_pool"]], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300, check=True)
    dep = done.stdout.strip().splitlines()[-1]
    with temporary_settings(updates={PREFECT_API_URL: info["prefect_api_url"]}), get_client(sync_client=True) as pc:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            runs = [r for r in pc.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep])))
                    if r.state and r.state.is_completed()]
            if runs:
                break
            time.sleep(2)
        else:
            raise RuntimeError("no scheduled run completed")
        pc.pause_deployment(dep)
        due = runs[0].expected_start_time.timestamp()
    client = MlflowClient(tracking_uri=info["mlflow_uri"])
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()],
                               "tags.`nnpipe.flow` = 'nnpipe-train'", order_by=["attributes.start_time ASC"],
                               max_results=1)
    first = min(m.timestamp for m in client.get_metric_history(run.info.run_id, "train/loss")) / 1000
    return first - due


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="nnpipe-bench-stack-"))
    root.chmod(0o755)
    state = root / "state"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "DASK_"))}
    base.update(PREFECT_HOME=str(root / "prefect"), DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
                MLFLOW_ENABLE_TELEMETRY="false")
    stack = [sys.executable, "-m", "nnpipe.deploy.stack"]
    figures: dict[str, object] = {}
    t0 = time.perf_counter()
    subprocess.run([*stack, "up", "--production", "--no-ui", "--state-dir", str(state)], env=base, check=True,
                   capture_output=True, timeout=600)
    figures["cold_up_s"] = round(time.perf_counter() - t0, 1)
    try:
        info = json.loads((state / "stack.json").read_text())
        env = {**base, **info["client_env"]}
        figures["schedule_due_to_first_epoch_s"] = round(schedule_latency(info, env), 1)
        pg_env = {"PGPASSFILE": str(state / "secrets" / "pgpass")}
        pg = info["mlflow_backend_store_uri"]
        sqlite = f"sqlite:///{root / 'registry.db'}"
        for clients in (1, 8):
            for label, uri in (("postgresql", pg), ("sqlite", sqlite)):
                try:
                    figures[f"registry_ops_per_s_{label}_{clients}"] = round(registry_rate(uri, clients, pg_env), 1)
                except Exception as exc:  # SQLite under 8 writers may refuse: that is a figure too
                    figures[f"registry_ops_per_s_{label}_{clients}"] = f"failed: {type(exc).__name__}: {exc}"[:200]
        local = root / "lake"
        write_parts(args.rows, local)
        import s3fs

        os.environ.update({k: v for k, v in info["client_env"].items() if k.startswith("AWS_")})
        s3fs.S3FileSystem().put(str(local) + "/", "lake/bench/", recursive=True)
        for label, location in (("local", str(local)), ("s3", "s3://lake/bench/")):
            out = train_once(location, info["dask_address"], env, args.rows)
            figures[f"{label}_samples_per_s"] = round(out["samples_per_s"])
            figures[f"{label}_driver_peak_rss_mb"] = round(out["rss_mb"])
    finally:
        subprocess.run([*stack, "down", "--state-dir", str(state)], env=base, capture_output=True, timeout=300)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
