"""The production stack end to end: PostgreSQL, rclone S3, TLS Dask, MLflow and Prefect on PostgreSQL, a work pool.

One stack for the module (bringing it up is most of the cost); the tests run
in file order and build on each other: train from ``s3://``, let a schedule
fire, drill faults, then restart the stack and find everything still there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest

from tests.flows.conftest import REPO, clean_env
from tests.production.conftest import missing_production, open_state_dir

pytestmark = [pytest.mark.stack, pytest.mark.server, pytest.mark.cluster]
MODEL = "lake-model"
EPOCHS_LONG = 40  # long enough (~20 s of training here) to stop PostgreSQL or the store in the middle
# the drills that kill the worker or stop the stack interrupt it: minutes of training, so it is still training
# when the signal comes (at 40 epochs it sometimes finished and registered while `down` stopped the serve process)
EPOCHS_DRILL = 1000
# the drills chain several stack operations (a flow run on the worker, `down`, `up`, the next scheduled run, eight
# trains at once); on a loaded 2-core machine one took 460 s, and the module's `down` at teardown counts too
DRILL_TIMEOUT = 1200


class Stack:
    """The running stack: its state directory, ``stack.json`` and the environment a shell gets from ``stack env``."""

    def __init__(self, state: Path, home: Path) -> None:
        self.state, self.home = state, home

    @property
    def info(self) -> dict[str, Any]:
        return json.loads((self.state / "stack.json").read_text())

    def env(self) -> dict[str, str]:
        return clean_env(self.home, **self.info["client_env"])

    def up(self) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "nnpipe.deploy.stack", "up", "--production", "--no-ui",
                               "--workers", "2", "--serve", MODEL, "--state-dir", str(self.state)],
                              cwd=REPO, env=clean_env(self.home), capture_output=True, text=True, timeout=400)

    def down(self) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "nnpipe.deploy.stack", "down", "--state-dir", str(self.state)],
                              cwd=REPO, env=clean_env(self.home), capture_output=True, text=True, timeout=300)

    def train(self, dataset: str, epochs: int, wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
        args = [sys.executable, "-m", "nnpipe.cli", "train", "--dataset", dataset, "--target", "label", "--mode",
                "sync", "--workers", "2", "--epochs", str(epochs), "--model-name", MODEL]
        env = self.env()  # flow runs on the stack's Prefect server too
        if wait:
            return subprocess.run(args, cwd=self.home, env=env, capture_output=True, text=True, timeout=400)
        return subprocess.Popen(args, cwd=self.home, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)

    def mlflow(self):
        from mlflow import MlflowClient

        uri = self.info["mlflow_uri"]
        return MlflowClient(tracking_uri=uri, registry_uri=uri)

    @contextmanager
    def prefect(self) -> Iterator[Any]:
        """A Prefect client of the stack's server."""
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: self.info["prefect_api_url"]}):
            with get_client(sync_client=True) as client:
                yield client

    def logs(self) -> str:
        return "".join(f"\n--- {p.name}\n" + p.read_text()[-1500:] for p in sorted((self.state / "logs").glob("*.log")))


def put_lake(prefix: str, df: pd.DataFrame, first: int = 0, n_parts: int = 3) -> None:
    """Write ``df`` as ``n_parts`` Parquet objects ``part-<first>...`` under ``s3://<prefix>/`` (the stack's store)."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    size = -(-len(df) // n_parts)
    for i in range(n_parts):
        with fs.open(f"{prefix}/part-{first + i}.parquet", "wb") as f:
            df.iloc[i * size:(i + 1) * size].to_parquet(f, index=False)


def frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 6))
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(6)])
    df["label"] = np.where(X[:, 0] + 0.5 * X[:, 1] * X[:, 2] > 0, "a", "b")
    return df


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    reason = missing_production()
    if reason:
        pytest.skip(reason)
    root = open_state_dir("nnpipe-stack-")
    home = root / "home"
    home.mkdir()
    s = Stack(root / "state", home)
    done = s.up()
    try:
        assert done.returncode == 0, done.stderr[-3000:] + s.logs()
        saved = dict(os.environ)
        # this process writes to the lake like a shell after `stack env`
        os.environ.update({k: v for k, v in s.info["client_env"].items() if k.startswith("AWS_")})
        try:
            yield s
        finally:
            os.environ.clear()
            os.environ.update(saved)
    finally:
        s.down()
        shutil.rmtree(root, ignore_errors=True)


def test_up_starts_every_process_with_secrets_only_in_files(stack: Stack):
    from nnpipe.deploy.stack import status

    assert set(status(stack.state).values()) == {"running"}, status(stack.state)
    secrets = stack.state / "secrets"
    for path in secrets.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path
    password = (secrets / "pg-password").read_text().strip()
    s3_secret = (secrets / "aws-credentials").read_text().split("aws_secret_access_key = ")[1].strip()
    for pid_file in (stack.state / "pids").glob("*.pid"):  # no secret on any command line of the stack
        cmdline = Path(f"/proc/{pid_file.read_text()}/cmdline").read_bytes().decode()
        assert password not in cmdline and s3_secret not in cmdline, pid_file.name
    info = stack.info
    assert info["dask_address"].startswith("tls://") and "@" in info["mlflow_backend_store_uri"]
    assert password not in json.dumps(info) and s3_secret not in json.dumps(info)
    if shutil.which("prometheus"):  # Debian's package (.ci/run installs it): it scrapes what exists
        from nnpipe.deploy.production import scrape_targets

        deadline = time.monotonic() + 60
        while {(health := scrape_targets(info["prometheus"])).get(job) for job in ("mlflow", "dask")} != {"up"} \
                and time.monotonic() < deadline:  # the first scrape comes within a scrape interval (5 s)
            time.sleep(2)
        assert health["mlflow"] == "up" and health["dask"] == "up", health
    else:
        assert info["prometheus"].startswith("not running: Debian's `prometheus` package is not installed")


def test_training_from_the_lake_tracks_to_postgres_and_stores_artefacts_in_the_bucket(stack: Stack):
    import psycopg2

    put_lake("lake/tabular", frame(3000, 0))
    done = stack.train("s3://lake/tabular/", epochs=3)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    client = stack.mlflow()
    version = client.get_model_version_by_alias(MODEL, "champion")
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["dataset.files"] == "3"
    assert run.data.tags["dask.address"] == stack.info["dask_address"]  # the TLS cluster
    secrets = stack.state / "secrets"
    text = json.dumps([run.data.params, run.data.tags])
    assert (secrets / "pg-password").read_text().strip() not in text
    # the artefacts are objects in the bucket (files under the store's folder), proxied by the server
    objects = [p for p in (stack.state / "s3" / "mlflow-artifacts").rglob("*") if p.is_file()]
    assert any(version.run_id in str(p) for p in objects) or any("MLmodel" == p.name for p in objects), objects[:5]
    # and the registry rows are in PostgreSQL
    port = int(stack.info["postgres"].rsplit(":", 1)[1])
    with psycopg2.connect(host="127.0.0.1", port=port, user="nnpipe", dbname="mlflow",
                          password=(secrets / "pg-password").read_text().strip()) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM model_versions WHERE name = %s", (MODEL,))
        assert cur.fetchone()[0] >= 1
    # the stack's `nnpipe serve` follows the champion of the PostgreSQL-backed registry
    import urllib.request

    deadline, served = time.monotonic() + 30, None
    while time.monotonic() < deadline and served != int(version.version):
        try:
            with urllib.request.urlopen(f"{stack.info['serve']}/version", timeout=5) as answer:
                served = json.loads(answer.read())["version"]
        except OSError:  # 503 until the champion is loaded
            pass
        time.sleep(1)
    assert served == int(version.version), (served, version.version)


def _flow_runs(stack: Stack, deployment_id: str) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with stack.prefect() as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def _wait_completed(stack: Stack, deployment_id: str, after: float, timeout: float) -> Any:
    """The first COMPLETED flow run of the deployment that started after ``after`` (epoch seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in _flow_runs(stack, deployment_id):
            if run.state and run.state.is_completed() and run.start_time and run.start_time.timestamp() > after:
                return run
            assert not (run.state and run.state.is_failed()), (run.name, run.state.message)
        time.sleep(3)
    raise AssertionError(f"no completed scheduled run within {timeout} s: "
                         f"{[(r.name, r.state_name) for r in _flow_runs(stack, deployment_id)]}")


DEPLOY = """
import sys
from nnpipe.deploy.deployments import Scheduled, deploy_to_pool
d = Scheduled("lake-every-20s", "0 3 * * *", {"dataset": "s3://lake/scheduled/", "target": "label", "mode": "sync",
              "workers": 2, "epochs": 3, "model_name": "lake-scheduled", "warm_start": "champion"},
              "The lake, retrained on a schedule from the champion's weights.")
print(deploy_to_pool(sys.argv[1], [d], interval=20)[0])
"""


def test_a_scheduled_run_fires_on_its_own_and_picks_up_new_parts(stack: Stack):
    put_lake("lake/scheduled", frame(900, 1))
    start = time.time()
    done = subprocess.run([sys.executable, "-c", DEPLOY, stack.info["work_pool"]], cwd=REPO, env=stack.env(),
                          capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stderr[-3000:]
    deployment_id = done.stdout.strip().splitlines()[-1]
    try:
        first = _wait_completed(stack, deployment_id, start, timeout=240)  # nobody calls run_deployment
        put_lake("lake/scheduled", frame(300, 2), first=3, n_parts=1)  # a new part lands in the lake
        second = _wait_completed(stack, deployment_id, time.time(), timeout=240)
    finally:
        with stack.prefect() as client:
            client.pause_deployment(deployment_id)  # leave the cluster to the next tests
    client = stack.mlflow()
    runs = {r.info.run_id: r for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        "tags.`dataset.location` = 's3://lake/scheduled/'")}
    finished = sorted((r for r in runs.values() if r.info.status == "FINISHED"), key=lambda r: r.info.start_time)
    files = [int(r.data.tags["dataset.files"]) for r in finished]
    assert files[0] == 3 and files[-1] == 4, files  # the later run read the new part
    assert finished[0].data.tags["nnpipe.warm_start"] == "seed: lake-scheduled has no champion yet"
    assert finished[-1].data.tags["nnpipe.warm_start"].startswith("champion v")  # the nightly run continued it
    assert client.get_model_version_by_alias("lake-scheduled", "champion") is not None
    assert first.id != second.id


def _wait_running(stack: Stack, proc: subprocess.Popen, points: int = 2, timeout: float = 200) -> str:
    """The id of ``proc``'s RUNNING MLflow run once it has logged ``points`` epochs.

    Only a run started after ``proc`` counts: a run an earlier drill left RUNNING (its driver killed,
    not yet swept) would otherwise be taken for this one, and the fault injected before ``proc``
    even reached Prefect.
    """
    import psutil

    started_ms = int(psutil.Process(proc.pid).create_time() * 1000)
    client = stack.mlflow()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()[-3000:] if proc.stdout else ""
        for run in client.search_runs([e.experiment_id for e in client.search_experiments()],
                                      f"attributes.status = 'RUNNING' and attributes.start_time >= {started_ms}",
                                      order_by=["attributes.start_time DESC"]):
            if len(client.get_metric_history(run.info.run_id, "train/loss")) >= points:
                return run.info.run_id
        time.sleep(1)
    raise AssertionError("the training never got going")


def test_postgres_stopped_for_10_s_during_training_loses_no_metric_point(stack: Stack):
    from nnpipe.deploy.production import restart_postgres

    put_lake("lake/long", frame(20000, 3))
    proc = stack.train("s3://lake/long/", epochs=EPOCHS_LONG, wait=False)
    run_id = _wait_running(stack, proc)
    restart_postgres(stack.state, pause=10)
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-3000:] + stack.logs()
    run = stack.mlflow().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert len(stack.mlflow().get_metric_history(run_id, "train/loss")) == EPOCHS_LONG


def test_object_store_restart_during_training_loses_no_artefact(stack: Stack):
    from nnpipe.deploy.production import restart_object_store

    proc = stack.train("s3://lake/long/", epochs=EPOCHS_LONG, wait=False)
    run_id = _wait_running(stack, proc, points=3)
    restart_object_store(stack.state)
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-3000:] + stack.logs()
    client = stack.mlflow()
    [version] = [v for v in client.search_model_versions(f"name = '{MODEL}'") if v.run_id == run_id]
    local = client.download_artifacts(run_id, "", dst_path=str(stack.home / "dl"))  # every artefact readable
    assert any(p.name == "MLmodel" for p in Path(local).rglob("*")) or version.source


LOAD_MODEL = "load-model"


@pytest.mark.timeout(DRILL_TIMEOUT)
def test_eight_concurrent_trains_and_registry_reads_against_postgres(stack: Stack):
    env = stack.env()
    trains = [subprocess.Popen([sys.executable, "-m", "nnpipe.cli", "train", "--dataset", "iris", "--mode", "single",
                                "--epochs", "3", "--hidden", "8", "--seed", str(i), "--model-name", LOAD_MODEL],
                               cwd=stack.home, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for i in range(8)]
    reads = 0
    while any(p.poll() is None for p in trains):  # users reading the registry while the eight register and gate
        for args in (["models"], ["history", LOAD_MODEL]):
            done = subprocess.run([sys.executable, "-m", "nnpipe.cli", *args], cwd=stack.home, env=env,
                                  capture_output=True, text=True, timeout=120)
            # before the first registration `history` says the model does not exist yet; nothing else may fail
            no_model_yet = args[0] == "history" and f"no registered model named '{LOAD_MODEL}'" in done.stderr
            assert done.returncode == 0 or no_model_yet, done.stdout[-1500:] + done.stderr[-1500:]
            assert "Traceback" not in done.stderr, done.stderr[-3000:]
            reads += 1
        time.sleep(1)
    outs = [p.communicate(timeout=300)[0] for p in trains]
    for out, p in zip(outs, trains):
        assert p.returncode == 0 and "Traceback" not in out, out[-3000:]
    assert reads >= 2
    client = stack.mlflow()
    versions = client.search_model_versions(f"name = '{LOAD_MODEL}'")
    assert sorted(int(v.version) for v in versions) == list(range(1, 9))  # eight runs, eight distinct versions
    assert len({v.run_id for v in versions}) == 8
    scores = {int(v.version): client.get_run(v.run_id).data.metrics["test/accuracy"] for v in versions}
    champion = int(client.get_model_version_by_alias(LOAD_MODEL, "champion").version)
    assert scores[champion] == max(scores.values()), (champion, scores)  # the gates ran one after the other


LONG = """
import sys
from nnpipe.deploy.deployments import Scheduled, deploy_to_pool
d = Scheduled("lake-long", "0 3 * * *", {"dataset": "s3://lake/long/", "target": "label", "mode": "sync",
              "workers": 2, "epochs": int(sys.argv[2]), "model_name": sys.argv[3]}, "A training the drills interrupt.")
print(deploy_to_pool(sys.argv[1], [d])[0])
"""


@pytest.fixture(scope="module")
def long_deployment(stack: Stack) -> str:
    """A deployment on the stack's pool that trains long enough to be interrupted (run on demand only)."""
    put_lake("lake/long", frame(20000, 3))  # as the PostgreSQL drill does, so that the drills also run alone
    done = subprocess.run([sys.executable, "-c", LONG, stack.info["work_pool"], str(EPOCHS_DRILL), MODEL], cwd=REPO,
                          env=stack.env(), capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def _train_on_worker(stack: Stack, deployment_id: str) -> tuple[str, str]:
    """Start a flow run of ``deployment_id`` on the worker; once it trains: its flow run id and MLflow run id."""
    from nnpipe.tracking.orphans import FLOW_RUN_TAG

    with stack.prefect() as pc:
        flow_run_id = str(pc.create_flow_run_from_deployment(deployment_id).id)
    client = stack.mlflow()
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline:
        for run in client.search_runs([e.experiment_id for e in client.search_experiments()],
                                      f"tags.`{FLOW_RUN_TAG}` = '{flow_run_id}'"):
            assert run.info.status == "RUNNING", (run.info.status, run.data.tags.get("nnpipe.failure"))
            if len(client.get_metric_history(run.info.run_id, "train/loss")) >= 2:
                return flow_run_id, run.info.run_id
        time.sleep(1)
    raise AssertionError(f"flow run {flow_run_id} never got training:" + stack.logs())


def _next_scheduled_run_completes(stack: Stack) -> None:
    """Resume the scheduled deployment, wait for a run of it to complete, pause it again."""
    from prefect.exceptions import ObjectNotFound

    try:
        with stack.prefect() as pc:
            deployment_id = str(pc.read_deployment_by_name("nnpipe-train/lake-every-20s").id)
    except ObjectNotFound:  # these drills run alone (-k): register it as the scheduled-run test does
        put_lake("lake/scheduled", frame(900, 1))
        done = subprocess.run([sys.executable, "-c", DEPLOY, stack.info["work_pool"]], cwd=REPO, env=stack.env(),
                              capture_output=True, text=True, timeout=200)
        assert done.returncode == 0, done.stderr[-3000:]
        deployment_id = done.stdout.strip().splitlines()[-1]
    with stack.prefect() as pc:
        pc.resume_deployment(deployment_id)
    try:
        _wait_completed(stack, deployment_id, time.time(), timeout=240)
    finally:
        with stack.prefect() as pc:
            pc.pause_deployment(deployment_id)


@pytest.mark.timeout(DRILL_TIMEOUT)
def test_worker_killed_during_a_flow_run_is_restarted_and_the_run_ends_crashed(stack: Stack, long_deployment: str):
    import psutil

    versions = len(stack.mlflow().search_model_versions(f"name = '{MODEL}'"))
    flow_run_id, run_id = _train_on_worker(stack, long_deployment)
    supervisor = psutil.Process(int((stack.state / "pids" / "prefect-worker.pid").read_text()))
    [worker] = supervisor.children()
    victims = [worker, *worker.children(recursive=True)]
    for proc in victims:  # SIGKILL: the worker and its flow run die together (the OOM killer, a lost container)
        proc.kill()
    psutil.wait_procs(victims, timeout=10)
    deadline = time.monotonic() + 30
    while not [p for p in supervisor.children() if p.pid != worker.pid] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [p for p in supervisor.children() if p.pid != worker.pid], "the supervisor did not restart the worker"
    _next_scheduled_run_completes(stack)  # the restarted worker runs it; its flow ends the dead run first
    run = stack.mlflow().get_run(run_id)
    assert run.info.status == "FAILED", run.info.status
    assert run.data.tags["nnpipe.failure"].startswith("the driver process died"), run.data.tags["nnpipe.failure"]
    with stack.prefect() as pc:
        state = pc.read_flow_run(flow_run_id).state
    assert state.is_crashed() and "the driver process died" in state.message, (state.type, state.message)
    assert len(stack.mlflow().search_model_versions(f"name = '{MODEL}'")) == versions  # nothing registered


@pytest.mark.timeout(DRILL_TIMEOUT)
def test_down_then_up_keeps_runs_versions_aliases_history_deployments_and_flow_runs(stack: Stack,
                                                                                   long_deployment: str):
    from nnpipe.deploy.interrupted import STOPPED

    flow_run_id, run_id = _train_on_worker(stack, long_deployment)  # `stack down` while a flow run trains
    client = stack.mlflow()
    before_versions = sorted((v.name, v.version) for v in client.search_model_versions())
    before_alias = client.get_model_version_by_alias(MODEL, "champion").version
    before_runs = len(client.search_runs([e.experiment_id for e in client.search_experiments()]))
    before_desc = client.get_registered_model(MODEL).description
    with stack.prefect() as pc:
        before_deployments = sorted(d.name for d in pc.read_deployments())
        before_flow_runs = len(pc.read_flow_runs())
    stopping = stack.down()
    assert stopping.returncode == 0, stopping.stderr[-3000:]
    assert f"stopped while training: Prefect flow run {flow_run_id}: Crashed" in stopping.stdout, stopping.stdout
    done = stack.up()
    assert done.returncode == 0, done.stderr[-3000:] + stack.logs()
    client = stack.mlflow()
    # the interrupted run first: ended, saying the stack was stopped, and nothing registered from it
    run = client.get_run(run_id)
    worker_log = (stack.state / "logs" / "prefect-worker.log").read_text()[-6000:]
    assert run.info.status in ("KILLED", "FAILED") and run.data.tags["nnpipe.failure"].startswith(STOPPED), \
        (run.info.status, run.data.tags.get("nnpipe.failure"), stopping.stdout, worker_log)
    assert not [v for v in client.search_model_versions(f"name = '{MODEL}'") if v.run_id == run_id], worker_log
    assert sorted((v.name, v.version) for v in client.search_model_versions()) == before_versions
    assert client.get_model_version_by_alias(MODEL, "champion").version == before_alias
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == before_runs
    assert client.get_registered_model(MODEL).description == before_desc  # the champion's history table
    with stack.prefect() as pc:
        assert sorted(d.name for d in pc.read_deployments()) == before_deployments
        assert len(pc.read_flow_runs()) >= before_flow_runs
    # the artefacts of the first version are still served from the bucket
    first = client.get_model_version(MODEL, "1")
    assert client.download_artifacts(first.run_id, "", dst_path=str(stack.home / "dl-after"))
    # its flow run Crashed, saying why
    with stack.prefect() as pc:
        state = pc.read_flow_run(flow_run_id).state
    assert state.is_crashed() and state.message.startswith("the stack was stopped"), (state.type, state.message)
    _next_scheduled_run_completes(stack)  # and the schedule goes on after `up`
