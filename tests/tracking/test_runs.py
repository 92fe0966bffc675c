"""Run lifecycle against a real SQLite store: params, tags, metrics, artefacts, failure."""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import mlflow
import pytest

from nnpipe import TrainConfig, tracking
from nnpipe.tracking.lineage import git_revision


def test_tracking_uri_defaults_to_sqlite_in_cwd_and_follows_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert tracking.tracking_uri() == "http://127.0.0.1:1"
    assert tracking.lock_path().name.startswith("nnpipe-registry-")
    assert tracking.lock_path(f"sqlite:///{tmp_path / 'x.db'}") == tmp_path / "x.db.nnpipe.lock"
    with pytest.raises(ValueError, match="non-empty"):
        tracking.configure("  ")


def test_params_tags_and_metrics_are_logged(sqlite_store):
    long_value = "x" * 7000
    params = {"train": {"lr": 0.01, "epochs": 3, "hidden": [8, 4]}, "note": long_value,
              **{f"p{i}": i for i in range(150)}}  # more than one log_batch of params
    tags = tracking.run_tags("iris", "abc123", cluster_address="tcp://127.0.0.1:8786", workers=2)
    with tracking.training_run("exp-params", params, tags, run_name="r1") as run:
        run_id = run.info.run_id
        callback = tracking.metrics_callback(run_id)
        callback(0, {"train/loss": 1.0, "val/accuracy": 0.5, "dist/staleness": 2, "worker/0/samples_per_s": 99.0,
                     "lr": 0.01})
        callback(1, {"train/loss": 0.5, "val/accuracy": float("nan"), "dist/consensus_distance": math.inf})
        logged = tracking.log_final_metrics(run_id, {"accuracy": 0.9, "test/loss": 0.2})
    assert logged == {"test/accuracy": 0.9, "test/loss": 0.2}

    c = tracking.client()
    r = c.get_run(run_id)
    assert r.info.status == "FINISHED" and r.info.run_name == "r1"
    assert r.data.params["train.lr"] == "0.01" and r.data.params["train.hidden"] == "[8, 4]"
    assert r.data.params["p149"] == "149"
    assert len(r.data.params["note"]) <= 6000 and r.data.params["note"].endswith("[truncated]")
    assert r.data.tags["dataset.name"] == "iris" and r.data.tags["dataset.hash"] == "abc123"
    assert r.data.tags["dask.address"] == "tcp://127.0.0.1:8786" and r.data.tags["dask.workers"] == "2"
    assert r.data.tags["nnpipe.version"]
    # The revision of wherever nnpipe runs from (none for an installed package or a bare copy).
    assert r.data.tags.get("nnpipe.git_commit") == git_revision()[0]
    history = {m.step: m.value for m in c.get_metric_history(run_id, "train/loss")}
    assert history == {0: 1.0, 1: 0.5}
    # non-finite values are skipped, not logged as NaN
    assert [m.step for m in c.get_metric_history(run_id, "val/accuracy")] == [0]
    assert c.get_metric_history(run_id, "dist/consensus_distance") == []
    # grouped as the UI sections them: one dist/ group for the workers, lr with the training metrics
    assert r.data.metrics["dist/worker/0/samples_per_s"] == 99.0 and r.data.metrics["dist/staleness"] == 2.0
    assert r.data.metrics["train/lr"] == 0.01 and "lr" not in r.data.metrics


def test_failed_run_is_marked_and_cannot_be_registered(sqlite_store, iris_splits):
    import numpy as np

    from nnpipe.api import build_spec
    from nnpipe.core.network import init_params
    from nnpipe.model import Model

    _, splits = iris_splits
    spec = build_spec("multiclass", 4, 3, (4,))
    model = Model(spec, init_params(spec, np.random.default_rng(0)), classes=splits.classes,
                  feature_names=splits.feature_names)
    with pytest.raises(FloatingPointError, match="diverged at epoch 3"):
        with tracking.training_run("exp-fail", {"lr": 1e9}, {}) as run:
            run_id = run.info.run_id
            uri = tracking.log_model(run_id, model, splits.raw_test)
            raise FloatingPointError("diverged at epoch 3")
    r = tracking.client().get_run(run_id)
    assert r.info.status == "FAILED"
    assert r.data.tags[tracking.FAILURE_TAG] == "FloatingPointError: diverged at epoch 3"
    assert mlflow.active_run() is None
    with pytest.raises(tracking.RegistrationRefused, match="FAILED.*diverged at epoch 3"):
        tracking.register_model(uri, "never-registered", run_id)
    with pytest.raises(tracking.UnknownModelError, match="'never-registered'"):
        tracking.list_versions("never-registered")


def test_training_artifacts_are_pngs_and_config(sqlite_store):
    history = {"train/loss": [1.0, 0.6, 0.4], "val/loss": [1.1, 0.7, 0.5],
               "train/accuracy": [0.3, 0.6, 0.8], "val/accuracy": [0.3, 0.5, 0.7]}
    config = {"train": {"lr": 0.01, "hidden": (8,)}, "data": {"name": "iris"}}
    with tracking.training_run("exp-art", {}, {}) as run:
        paths = tracking.log_training_artifacts(run.info.run_id, history, config,
                                                y_true=["a", "b", "b", "c"], y_pred=["a", "b", "c", "c"])
    # the plots at the root, where MLflow's run comparison looks for common artifacts
    assert {"loss.png", "accuracy.png", "confusion_matrix.png", "plots/confusion_matrix.json",
            "config/config.json", "config/config.yaml"} <= set(paths)
    local = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=""))
    for png in ("loss.png", "accuracy.png", "confusion_matrix.png"):
        assert (local / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import json

    cm = json.loads((local / "plots" / "confusion_matrix.json").read_text())
    assert cm == {"labels": ["a", "b", "c"], "counts": [[1, 0, 0], [0, 1, 1], [0, 0, 1]]}
    assert json.loads((local / "config" / "config.json").read_text())["train"]["hidden"] == [8]
    assert "lr: 0.01" in (local / "config" / "config.yaml").read_text()


def test_configure_switches_store_and_reset_restores_env(tmp_path, monkeypatch):
    import os

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    a, b = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    assert tracking.configure(a) == a and mlflow.get_registry_uri() == a
    # MLflow echoed ``a`` into MLFLOW_REGISTRY_URI; switching stores must not keep that registry
    assert tracking.configure(b) == b and mlflow.get_registry_uri() == b
    tracking.reset()
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", a)  # the user's own choice is kept
    assert tracking.configure(b) == b and mlflow.get_registry_uri() == a


def test_checkpoints_are_logged_for_resuming(sqlite_store, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "round-000010.npz").write_bytes(b"PK-fake-but-opaque")
    with tracking.training_run("exp-ckpt", TrainConfig(epochs=2), {}) as run:
        assert tracking.log_checkpoints(run.info.run_id, ckpt)
        assert not tracking.log_checkpoints(run.info.run_id, tmp_path / "missing")
    r = tracking.client().get_run(run.info.run_id)
    assert r.data.params["epochs"] == "2"  # a TrainConfig is logged through its to_dict()
    names = [f.path for f in tracking.client().list_artifacts(run.info.run_id, "checkpoints")]
    assert names == ["checkpoints/round-000010.npz"]


def test_champion_stack_walks_back_through_successive_rollbacks():
    from nnpipe.tracking.history import champion_stack

    def ev(action, to, alias="champion"):
        return {"alias": alias, "action": action, "to": to}

    events = [ev("gate", 1), ev("register", 2, "candidate"), ev("gate", 2), ev("promote", 3)]
    assert champion_stack(events) == [1, 2, 3]
    assert champion_stack(events + [ev("rollback", 2)]) == [1, 2]
    assert champion_stack(events + [ev("rollback", 2), ev("rollback", 1)]) == [1]
    # rolling back to a version that never reigned (--to) pushes it
    assert champion_stack(events + [ev("rollback", 7)]) == [1, 2, 3, 7]


def test_log_model_after_the_run_block_keeps_the_run_finished(sqlite_store, iris_splits):
    import numpy as np

    from nnpipe.api import build_spec
    from nnpipe.core.network import init_params
    from nnpipe.model import Model

    _, splits = iris_splits
    spec = build_spec("multiclass", 4, 3, (4,))
    model = Model(spec, init_params(spec, np.random.default_rng(0)), classes=splits.classes,
                  feature_names=splits.feature_names, mean=splits.mean, scale=splits.scale)
    with tracking.training_run("exp-late", {}, {}) as run:
        pass
    uri = tracking.log_model(run.info.run_id, model, splits.raw_test)
    assert mlflow.active_run() is None
    assert tracking.run_status(run.info.run_id) == "FINISHED"
    assert tracking.register_model(uri, "late-model", run.info.run_id) == 1
    loaded = mlflow.pyfunc.load_model("models:/late-model@candidate")
    assert loaded.predict(loaded.input_example).tolist() == model.predict(splits.raw_test[:5]).tolist()
    assert loaded.metadata.signature.inputs.input_names() == splits.feature_names


def test_git_revision_of_a_checkout_and_of_a_plain_folder(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    for args in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "first"]):
        subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert git_revision(repo) == (head, False)
    (tmp_path / "plain").mkdir()
    assert git_revision(tmp_path / "plain") == (None, None)
