"""``until`` through the pipeline: from a config file to the MLflow run's target/* metrics, tags and console line."""

from __future__ import annotations

from pathlib import Path

import pytest

from nnpipe.flows.config import build_config
from nnpipe.flows.pipeline import training_flow
from nnpipe.flows.progress import announcements

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _run(mlflow_uri: str, file: Path | None, **overrides):
    lines: list[str] = []
    with announcements(lines.append):
        result = training_flow(build_config(file, {"tracking_uri": mlflow_uri, "hidden": [8], **overrides}))
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
    return client, client.get_run(result["run_id"]), lines


def test_a_config_file_target_is_logged_and_stops_the_run(tmp_path: Path, mlflow_uri: str):
    file = tmp_path / "train.toml"
    file.write_text('epochs = 80\nlr = 0.01\nuntil = "val/accuracy>=0.8"\n')
    client, run, lines = _run(mlflow_uri, file)
    data = run.data
    assert data.params["until"] == "val/accuracy>=0.8" and data.params["stop_at_target"] == "True"
    assert data.tags["nnpipe.target"] == "val/accuracy>=0.8" and data.tags["nnpipe.target_reached"] == "true"
    epochs = int(data.metrics["target/epochs"])
    assert 1 <= epochs < 80 and data.metrics["target/seconds"] > 0
    accuracy = client.get_metric_history(run.info.run_id, "val/accuracy")
    assert len(accuracy) == epochs and accuracy[-1].value >= 0.8  # it stopped at the epoch that reached it
    assert [m.step for m in client.get_metric_history(run.info.run_id, "target/seconds")] == [epochs - 1]
    assert any(line.startswith(f"Target val/accuracy>=0.8: reached at epoch {epochs}, ") for line in lines), lines


def test_a_distributed_run_that_never_reaches_it_says_so_and_logs_its_bytes(mlflow_uri: str):
    client, run, lines = _run(mlflow_uri, None, mode="local-sgd", workers=2, epochs=3, until="val/loss<=0.0001",
                              stop_at_target=False)
    data = run.data
    assert data.tags["nnpipe.target_reached"] == "false" and "target/seconds" not in data.metrics
    assert any(line.startswith("Target val/loss<=0.0001: not reached (best val/loss ") for line in lines), lines
    sent = client.get_metric_history(run.info.run_id, "dist/bytes_sent")
    assert [m.step for m in sent] == [0, 1, 2] and all(m.value > 0 for m in sent)
    assert any(line.startswith("Wire:") and "1 Gbit/s" in line for line in lines), lines


@pytest.mark.parametrize("args,says", [
    (["--until", "val/loss>=0.3"], "error: config field 'until' (--until) 'val/loss>=0.3': loss is lower-is-better, "
                                   "write val/loss<=0.3"),
    (["--dataset", "diabetes", "--until", "val/accuracy>=0.9"],
     "error: --until 'val/accuracy>=0.9': a regression run logs val/loss, val/mse, val/mae, val/r2, not val/accuracy"),
])
def test_a_bad_target_is_one_line_before_any_run(tmp_path: Path, args, says):
    import subprocess

    from tests.flows.conftest import BIN, clean_env

    done = subprocess.run([str(BIN / "nnpipe"), "train", *args], cwd=tmp_path, env=clean_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.strip() == says, done.stderr
    assert not (tmp_path / "mlflow.db").exists()  # refused before any MLflow run (or Prefect server) started
