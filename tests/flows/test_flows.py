"""Flows in-process under one Prefect test server: caching, the sweep (the tune flow on a grid), a failed step."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect import flow

from nnpipe.flows import progress, tasks
from nnpipe.flows.config import build_config
from nnpipe.flows.pipeline import artifact_key, training_flow
from nnpipe.flows.tune import tune_flow
from tests.flows.test_artifact import read_artifact

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_split_is_cached_on_content_and_config():
    @flow
    def twice(seed: int) -> list[str]:
        ds = tasks.load("iris")
        first = tasks.split_scale(ds, 0.2, 0.1, seed, return_state=True)
        second = tasks.split_scale(ds, 0.2, 0.1, seed, return_state=True)
        other = tasks.split_scale(ds, 0.3, 0.1, seed, return_state=True)
        assert (first.result().X_test == second.result().X_test).all()
        return [first.name, second.name, other.name]

    names = twice(seed=12345)
    assert names[1] == "Cached" and names[2] != "Cached"


@pytest.mark.cluster
def test_sweep_nested_runs_best_registered(mlflow_uri: str):
    """``nnpipe sweep --grid lr=0.05,0.0001``: the tune flow with the grid sampler and no pruner."""
    from mlflow import MlflowClient

    # breast_cancer: a dataset name with an underscore, which Prefect artifact keys forbid.
    cfg = build_config(overrides={"dataset": "breast_cancer", "epochs": 8, "tracking_uri": mlflow_uri,
                                  "hidden": [16], "workers": 2})
    out = tune_flow(cfg, ["lr=0.05,0.0001"], sampler="grid", pruner="none")
    client = MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
    parent = client.get_run(out["parent_run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}
    assert sorted(float(c.data.params["lr"]) for c in children) == [0.0001, 0.05]  # the whole grid
    assert all(len(client.get_metric_history(c.info.run_id, "train/loss")) == 8 for c in children)
    # the best on the validation objective is registered and gated
    scores = {c.info.run_id: c.data.metrics["tune/objective"] for c in children}
    assert out["model_name"] == "nnpipe-breast_cancer"
    assert scores[out["best"]["run_id"]] == max(scores.values())
    champion = client.get_model_version_by_alias(out["model_name"], "champion")
    assert champion.run_id == out["best"]["run_id"]
    # the flow run's artefact: the study's summary, one row per trial, linking to each trial's run
    text = read_artifact(artifact_key("tune", out["study"]))
    assert text.startswith(f"# nnpipe tune: study `{out['study']}`") and out["parent_run_id"] in text
    assert f"`{out['model_name']}` version {out['registered']['version']}" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "COMPLETE" in line]
    assert len(rows) == 2 and all(any(f"`{c.info.run_id}`" in row for row in rows) for c in children)
    best_row = next(row for row in rows if out["best"]["run_id"] in row)
    assert f"| {out['best']['value']:.4f} |" in best_row


def test_failed_step_fails_flow_and_run(tmp_path: Path, mlflow_uri: str):
    from mlflow import MlflowClient

    bad = tmp_path / "bad.csv"
    bad.write_text("a,label\n1,x\ninf,y\n2,x\n")
    cfg = build_config(overrides={"dataset": str(bad), "target": "label", "tracking_uri": mlflow_uri})
    state = training_flow(cfg, return_state=True)
    assert state.is_failed()
    with pytest.raises(ValueError, match=r"bad\.csv: column 'a' row 2"):
        state.result()
    client = MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert [r.info.status for r in runs] == ["FAILED"]
    assert client.search_registered_models() == []


def test_a_lost_cluster_message_names_the_run_to_resume():
    from nnpipe.distributed.watch import RESUME_HINT, SchedulerLost

    lost = SchedulerLost(f"lost the Dask scheduler at tcp://10.0.0.5:8786; the run stopped: {RESUME_HINT}")
    named = tasks.name_the_run(lost, "abc123")
    assert isinstance(named, SchedulerLost)
    assert "`nnpipe train --resume-from abc123`" in str(named) and "RUN_ID" not in str(named)
    assert tasks.name_the_run(ValueError("bad value"), "abc123") is None
    assert tasks.name_the_run(lost, None) is None


def test_progress_lines_show_lost_workers_once_there_are_some():
    assert "workers_lost" not in progress.format_logs({"train/loss": 0.5, "dist/workers_lost": 0.0})
    assert progress.format_logs({"train/loss": 0.5, "dist/workers_lost": 1.0}) == "train/loss=0.5 dist/workers_lost=1"


def test_artifact_keys_are_what_prefect_accepts():
    assert artifact_key("sweep", "nnpipe-breast_cancer") == "sweep-nnpipe-breast-cancer"
    assert artifact_key("train", "My Model.v2") == "train-my-model-v2"


def test_run_logs_checkpoints_and_a_later_run_resumes_from_them(mlflow_uri: str):
    from mlflow import MlflowClient

    first = training_flow(build_config(overrides={
        "tracking_uri": mlflow_uri, "epochs": 20, "patience": 100, "checkpoint_every": 5, "hidden": [8]}))
    client = MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
    logged = sorted(f.path for f in client.list_artifacts(first["run_id"], "checkpoints"))
    assert logged == [f"checkpoints/ckpt-{e:06d}.npz" for e in (4, 9, 14, 19)]

    second = training_flow(build_config(overrides={
        "tracking_uri": mlflow_uri, "epochs": 30, "patience": 100, "checkpoint_every": 5, "hidden": [8],
        "resume_from": first["run_id"]}))
    steps = [m.step for m in client.get_metric_history(second["run_id"], "train/loss")]
    assert steps == list(range(20, 30))  # epochs 0-19 came from the first run's last checkpoint
    assert client.get_run(second["run_id"]).info.status == "FINISHED"
    # The resumed single-process run took the fused step loop and says so on the run.
    assert client.get_run(second["run_id"]).data.tags["nnpipe.single_loop"] == "fused"

    with pytest.raises(Exception, match="logged no checkpoints|no MLflow run"):
        training_flow(build_config(overrides={"tracking_uri": mlflow_uri, "resume_from": "0" * 32}))
