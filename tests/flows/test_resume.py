"""``nnpipe train --resume-from RUN_ID``: the run's own settings come back; what cannot work is refused first.

One real run (wine, a 6-unit network, checkpoints every 10 epochs) in a
SQLite store, resumed through the ``nnpipe`` command in-process against the
session's Prefect test server. The refusals must leave the store exactly as
it was: no new MLflow run for a typo.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from nnpipe.cli import app

runner = CliRunner()


def _run_id(output: str) -> str:
    found = re.search(r"MLflow run:\s+([0-9a-f]{32})", output)
    assert found, output
    return found.group(1)


def _runs(uri: str) -> list:
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return sorted((r.info.run_id, r.info.status) for e in c.search_experiments() for r in c.search_runs([e.experiment_id]))


@pytest.fixture(scope="module")
def first(tmp_path_factory, prefect_harness):
    root = tmp_path_factory.mktemp("resume")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("NNPIPE_PREFECT_SERVER", "ephemeral")
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # as `nnpipe` sets it
        mp.chdir(root)
        result = runner.invoke(app, ["train", "--dataset", "wine", "--hidden", "6", "--epochs", "12", "--lr", "0.01"])
    assert result.exit_code == 0, result.output
    run_id = _run_id(result.output)
    return {"root": root, "uri": uri, "run_id": run_id}


@pytest.fixture
def in_store(first, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", first["uri"])
    monkeypatch.setenv("NNPIPE_PREFECT_SERVER", "ephemeral")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.chdir(first["root"])
    yield first
    from nnpipe import tracking

    tracking.reset()  # the CLI configured MLflow for this store: the next module's tests configure their own


def test_resume_with_no_flags_restores_the_run(in_store):
    old = in_store["run_id"]
    result = runner.invoke(app, ["train", "--resume-from", old])
    assert result.exit_code == 0, result.output
    assert f"Resuming:    run {old} (finished) from ckpt-000009.npz (after epoch 10 of 12): wine, 6 relu, single" in result.output
    new = _run_id(result.output)
    c = MlflowClient(tracking_uri=in_store["uri"], registry_uri=in_store["uri"])
    run = c.get_run(new)
    assert (run.data.params["dataset"], run.data.params["hidden"], run.data.params["lr"]) == ("wine", "6", "0.01")
    assert run.data.tags["nnpipe.resumed_from"] == old and old in run.data.tags["mlflow.note.content"]
    assert [m.step for m in c.get_metric_history(new, "train/loss")] == [10, 11]  # epochs 0-9 were the old run's


def test_a_flag_overrides_what_it_names(in_store):
    result = runner.invoke(app, ["train", "--resume-from", in_store["run_id"], "--epochs", "13", "--lr", "0.02"])
    assert result.exit_code == 0, result.output
    new = _run_id(result.output)
    params = MlflowClient(tracking_uri=in_store["uri"]).get_run(new).data.params
    assert (params["dataset"], params["hidden"], params["epochs"], params["lr"]) == ("wine", "6", "13", "0.02")


def _truncated_run(uri: str, root: Path, old: str) -> str:
    """A run with the first run's settings whose newest checkpoint is cut in half."""
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    src = Path(c.download_artifacts(old, "checkpoints/ckpt-000009.npz", str(root / "dl")))
    bad = root / "cut" / "ckpt-000019.npz"
    bad.parent.mkdir(exist_ok=True)
    bad.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    run = c.create_run(c.get_run(old).info.experiment_id, tags={"nnpipe.config": c.get_run(old).data.tags["nnpipe.config"]})
    c.log_artifact(run.info.run_id, str(bad), "checkpoints")
    c.set_terminated(run.info.run_id, "FAILED")
    return run.info.run_id


REFUSALS = [
    ("unknown-id", ["--resume-from", "0" * 32], "cannot resume: no MLflow run '00000000000000000000000000000000' in this store"),
    ("other-network", ["--resume-from", "{old}", "--hidden", "32"],
     "cannot resume run '{old}' with hidden=32: its checkpoint is for hidden=6"),
    ("other-mode", ["--resume-from", "{old}", "--mode", "sync"],
     "cannot resume run '{old}' with mode=sync: its checkpoint is for mode=single"),
    ("other-dataset", ["--resume-from", "{old}", "--dataset", "iris"],
     "cannot resume run '{old}' with dataset=iris: its checkpoint is for dataset=wine"),
    ("truncated-checkpoint", ["--resume-from", "{cut}"],
     "cannot resume: checkpoints/ckpt-000019.npz of run '{cut}' cannot be read as a checkpoint, truncated or not one"),
]


@pytest.mark.parametrize("case", REFUSALS, ids=[c[0] for c in REFUSALS])
def test_a_resume_that_cannot_work_is_refused_before_any_run(case, in_store):
    _, argv, message = case
    cut = _truncated_run(in_store["uri"], in_store["root"], in_store["run_id"]) if "{cut}" in " ".join(argv) else ""
    fill = lambda s: s.replace("{old}", in_store["run_id"]).replace("{cut}", cut)  # noqa: E731
    before = _runs(in_store["uri"])
    result = runner.invoke(app, ["train", *map(fill, argv)])
    assert result.exit_code == 1, result.output
    assert fill(message) in result.output and result.output.count("\n") == 1, result.output
    assert _runs(in_store["uri"]) == before
