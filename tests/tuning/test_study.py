"""Studies on a real local cluster with a real MLflow SQLite store and a real Optuna SQLite storage."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import optuna
import pytest

from nnpipe.config import TrainConfig
from nnpipe.tuning import tune
from nnpipe.tuning.runner import FAILURE_ATTR, RETRY_ATTR, RUN_ATTR
from nnpipe.tuning.study import get_storage
from nnpipe.tuning.worker import WORKER_ATTR

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def client():
    from nnpipe.distributed.cluster import connect

    with connect(workers=2) as c:
        c.wait_for_workers(2)
        yield c


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MLflow store and one Optuna storage for the module (creating a store costs seconds)."""
    return tmp_path_factory.mktemp("tune")


def _children(mlflow_client, parent):
    return mlflow_client.search_runs([parent.info.experiment_id],
                                     filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")


def test_study_prunes_registers_gates_and_resumes(client, store: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{store / 'mlflow.db'}"
    common = dict(train=TrainConfig(epochs=30, patience=10), hidden=[16], client=client, tracking_uri=uri,
                  model_name="tune-iris", study="iris-small", pruner="median",
                  storage=f"sqlite:///{store / 'optuna.db'}")  # an RDB here; the default journal file below
    first = tune("iris", ["lr=loguniform(1e-5,1e-1)", "optimizer=choice(adam,sgd)"], trials=6, parallel=2,
                 seed=0, **common)
    counts = first.counts()
    assert sum(counts.values()) == 6 and counts["PRUNED"] >= 1 and counts["COMPLETE"] >= 1 and counts["FAIL"] == 0

    mc = MlflowClient(tracking_uri=uri, registry_uri=uri)
    parent = mc.get_run(first.parent_run_id)
    children = _children(mc, parent)
    by_run = {t.run_id: t for t in first.trials}
    assert set(by_run) == {c.info.run_id for c in children}
    for child in children:
        t = by_run[child.info.run_id]
        # pruned: PRUNED in Optuna; in MLflow FINISHED (it did what it was asked), named and tagged pruned,
        # never FAILED or KILLED (issue 23: "a pruned trial shows as KILLED")
        assert child.info.status == "FINISHED"
        assert (child.data.tags.get("pruned") == "true") == (t.state == "PRUNED")
        assert ("(pruned after epoch" in child.info.run_name) == (t.state == "PRUNED")
        assert child.data.params["lr"] == str(t.params["lr"])
        assert len(mc.get_metric_history(child.info.run_id, "val/accuracy")) == t.epochs
    pruned = [t for t in first.trials if t.state == "PRUNED"]
    assert all(t.epochs < 30 for t in pruned)  # stopped mid-run on the worker

    # the best trial's model is registered and went through the gate
    reg = first.registered
    version = mc.get_model_version("tune-iris", reg["version"])
    assert version.run_id == first.best["run_id"] and reg["promoted"]
    assert version.tags["nnpipe.gate"].startswith("promoted ")
    # the tuned champion's run page is as rich as a `train` run's (issue 23)
    best_run = mc.get_run(first.best["run_id"])
    assert "None" not in best_run.data.params.values(), best_run.data.params
    assert {"lr", "optimizer", "hidden", "dataset", "promotion_metric"} <= set(best_run.data.params)
    assert best_run.inputs.dataset_inputs and best_run.inputs.dataset_inputs[0].dataset.name == "iris"
    files = {f.path for f in mc.list_artifacts(best_run.info.run_id)}
    assert {"loss.png", "accuracy.png", "confusion_matrix.png"} <= files
    note = best_run.data.tags["mlflow.note.content"]
    assert f"Trial {first.best['number']} of tuning study `iris-small`" in note and "promoted it to champion at 20" in note
    logged = mc.search_logged_models(experiment_ids=[best_run.info.experiment_id],
                                     filter_string=f"source_run_id = '{best_run.info.run_id}'")
    assert logged and logged[0].name != "model" and "iris-small" in logged[0].name
    assert "None" not in parent.data.params.values(), parent.data.params  # the settings that apply, as `train` logs
    parent_note = mc.get_run(first.parent_run_id).data.tags["mlflow.note.content"]
    assert f"tune-iris v{reg['version']}" in parent_note and "#/models/tune-iris/versions/" in parent_note
    assert f"trial {first.best['number']}" in parent_note.lower()
    assert str(mc.get_model_version_by_alias("tune-iris", "champion").version) == reg["version"]
    assert {"tune/summary.md", "tune/trials.csv", "tune/optimization_history.png",
            "tune/parallel_coordinate.png"} <= set(first.artifacts)
    assert parent.data.metrics["best/val/accuracy"] == pytest.approx(first.best["value"])

    # --study resumes: the same study and parent run, two more trials with new configurations
    second = tune("iris", None, trials=2, seed=0, **common)
    assert second.resumed and second.parent_run_id == first.parent_run_id and len(second.trials) == 2
    assert second.notes == []  # same base settings
    study = optuna.load_study(study_name="iris-small", storage=second.storage)
    assert len(study.trials) == 8 and {t.number for t in second.trials} == {6, 7}
    assert [t.params for t in second.trials] != [t.params for t in first.trials[:2]]
    assert len(_children(mc, parent)) == 8
    assert mc.get_run(first.parent_run_id).info.status == "FINISHED"


def test_killed_worker_does_not_end_the_study(client, store: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{store / 'mlflow.db'}"
    storage = str(store / "optuna.log")  # the default: a journal file next to the MLflow store
    killed: list[int] = []

    def kill_first_started_trial() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            try:
                trials = optuna.load_study(study_name="iris-kill", storage=get_storage(storage)).trials
            except KeyError:
                trials = []
            for t in trials:
                if t.state == optuna.trial.TrialState.RUNNING and t.intermediate_values and WORKER_ATTR in t.user_attrs:
                    os.kill(int(t.user_attrs[WORKER_ATTR].rsplit(":", 1)[1]), signal.SIGKILL)
                    killed.append(t.number)
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_first_started_trial, daemon=True)
    killer.start()
    result = tune("iris", ["lr=choice(0.01,0.02,0.03)"], trials=3, parallel=2, pruner="none", study="iris-kill",
                  train=TrainConfig(epochs=200), hidden=[8], client=client, tracking_uri=uri,
                  model_name="tune-kill", seed=1)
    killer.join()
    assert result.storage == storage
    assert killed, "no running trial was found to kill"
    study = optuna.load_study(study_name="iris-kill", storage=get_storage(storage))
    dead = study.trials[killed[0]]
    assert dead.state == optuna.trial.TrialState.FAIL and "died" in dead.user_attrs[FAILURE_ATTR]
    retries = [t for t in study.trials if t.user_attrs.get(RETRY_ATTR) == killed[0]]
    assert len(retries) == 1 and retries[0].params == dead.params
    assert retries[0].state == optuna.trial.TrialState.COMPLETE
    # the study went on: 3 configurations, one of them run twice, and a registered best
    assert len(study.trials) == 4 and sum(t.state.name == "COMPLETE" for t in study.trials) == 3
    assert result.registered is not None
    mc = MlflowClient(tracking_uri=uri)
    failed = mc.get_run(dead.user_attrs[RUN_ATTR])
    assert failed.info.status == "FAILED" and "died" in failed.data.tags["nnpipe.failure"]


def test_hyperband_prunes_and_a_resume_reuses_the_study_settings(client, store: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch):
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from nnpipe.cli import app
    from nnpipe.tuning import SpaceError

    uri = f"sqlite:///{store / 'mlflow.db'}"
    common = dict(train=TrainConfig(epochs=27, patience=10), hidden=[16], client=client, tracking_uri=uri,
                  model_name="tune-hb", study="iris-hb", seed=0)
    space = ["lr=loguniform(1e-5,1e-1)", "optimizer=choice(adam,sgd)"]
    # parallel 1: which trials share a Hyperband bracket and rung, and in what order, is then fixed
    first = tune("iris", space, trials=6, parallel=1, sampler="random", pruner="hyperband", **common)
    counts = first.counts()
    assert counts["PRUNED"] >= 1 and counts["COMPLETE"] >= 1 and counts["FAIL"] == 0
    assert all(t.epochs < 27 and t.reason.startswith("pruned after epoch") for t in first.trials
               if t.state == "PRUNED")
    assert (first.sampler, first.pruner) == ("random", "hyperband")

    # no space, sampler or pruner given: the study's own
    second = tune("iris", None, trials=2, **common)
    assert second.resumed and (second.sampler, second.pruner) == ("random", "hyperband")
    assert sorted(t.number for t in second.trials) == [6, 7]  # two at once: they finish in either order
    assert all(1e-5 <= t.params["lr"] <= 1e-1 and t.params["optimizer"] in ("adam", "sgd") for t in second.trials)

    mc = MlflowClient(tracking_uri=uri)
    experiment = mc.get_run(first.parent_run_id).info.experiment_id
    runs_before = len(mc.search_runs([experiment]))
    # another space, or another metric, is refused in one line before anything starts
    with pytest.raises(SpaceError) as err:
        tune("iris", ["lr=loguniform(1e-3,1e-1)", "optimizer=choice(adam,sgd)"], trials=1, **common)
    message = str(err.value)
    assert "\n" not in message and "'lr=loguniform(1e-3,1e-1)' where the study has 'lr=loguniform(1e-5,1e-1)'" in message
    with pytest.raises(ValueError, match="study 'iris-hb' optimises 'val/accuracy', not 'val/loss'"):
        tune("iris", None, trials=1, metric="val/loss", **common)
    monkeypatch.chdir(tmp_path)
    cli = CliRunner().invoke(app, ["tune", "--dataset", "iris", "--study", "iris-hb", "--storage", str(store / "optuna.log"),
                                   "--space", "lr=loguniform(1e-5,1e-1)"])
    assert cli.exit_code == 1 and len(cli.output.strip().splitlines()) == 1
    assert cli.output.startswith("error: study 'iris-hb' searches ") and "'optimizer=choice(adam,sgd)' is missing" in cli.output
    assert len(mc.search_runs([experiment])) == runs_before
    study = optuna.load_study(study_name="iris-hb", storage=get_storage(second.storage))
    assert len(study.trials) == 8 and study.user_attrs["nnpipe.space"] == space
    assert list(tmp_path.iterdir()) == []  # the CLI created no store and no study of its own


def test_timeout_stops_the_study_with_fewer_trials(client, store: Path):
    uri = f"sqlite:///{store / 'mlflow.db'}"
    asked = 500  # far more than fit in the time: ~0.1 s a trial
    result = tune("iris", ["lr=loguniform(1e-4,1e-1)"], trials=asked, timeout=1.0, parallel=2, sampler="random",
                  pruner="none", study="iris-timeout", train=TrainConfig(epochs=40), hidden=[16], client=client,
                  tracking_uri=uri, model_name="tune-timeout", seed=0)
    assert 1 <= len(result.trials) < asked and result.counts()["COMPLETE"] == len(result.trials)
    study = optuna.load_study(study_name="iris-timeout", storage=get_storage(result.storage))
    # trials running at the deadline finished; none was left RUNNING or WAITING
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE"] * len(result.trials)
    assert result.registered is not None and result.best is not None
