"""Run pages that tell the truth (issue 23), in headless Chromium against a real ``mlflow server``.

Two real flow runs of ``nnpipe-train``: one stopped early, one not.

* the early-stopped run's curves end at its last epoch, the restored model's
  validation metrics are ``val/best_*`` at the best epoch, and the page says why it stopped;
* compare shows only real differences: no ``None`` parameters, no ``system/*`` row
  of NaN (both runs have system metrics), the experiment opens on its runs table.

Skipped, saying why, without Debian's ``chromium`` and ``chromium-driver``.
"""

from __future__ import annotations

import json
import urllib.parse
import uuid

import pytest
from mlflow import MlflowClient

from nnpipe.flows.config import build_config
from nnpipe.flows.pipeline import training_flow
from nnpipe.tracking import links
from tests.browser import browser, shot, wait_for_text  # noqa: F401  (browser is a fixture)

pytestmark = [pytest.mark.server, pytest.mark.usefixtures("prefect_harness")]


@pytest.fixture(scope="module")
def two_runs(mlflow_server, tmp_path_factory):
    import os

    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("pages-flow"))
    try:
        name = f"pages-{uuid.uuid4().hex[:8]}"
        common = {"model_name": name, "hidden": [8], "tracking_uri": mlflow_server, "experiment": name}
        # a big learning rate and patience 2: validation loss turns up within a few epochs
        stopped = training_flow(build_config(overrides={**common, "epochs": 40, "lr": 0.3, "patience": 2}))
        plain = training_flow(build_config(overrides={**common, "epochs": 6, "lr": 0.01}))
    finally:
        os.chdir(here)
    return mlflow_server, stopped, plain


def test_an_early_stopped_runs_last_point_is_its_last_epoch(browser, two_runs, tmp_path):
    uri, stopped, _ = two_runs
    c = MlflowClient(uri)
    run = c.get_run(stopped["run_id"])
    note = run.data.tags["nnpipe.early_stopping"]
    assert note.startswith("early stopping: stopped after epoch ")
    epochs_run = int(note.split("stopped after epoch ", 1)[1].split(" ", 1)[0])
    assert epochs_run < 40
    steps = [m.step for m in c.get_metric_history(run.info.run_id, "val/loss")]
    assert max(steps) == epochs_run - 1 and len(steps) == epochs_run  # no point after the last epoch
    best = c.get_metric_history(run.info.run_id, "val/best_loss")
    assert len(best) == 1 and best[0].step == int(note.split("the model is epoch ", 1)[1].split("'", 1)[0]) - 1
    assert "Early stopping: stopped after epoch" in run.data.tags["mlflow.note.content"]

    browser.get(stopped["extra"]["run_url"])
    text = wait_for_text(browser, "Early stopping: stopped after epoch", "val/best_loss")
    assert "promoted it to champion at 20" in text
    assert shot(browser, tmp_path, "early-stopped-run").stat().st_size > 10_000


def test_compare_shows_only_real_differences(browser, two_runs, tmp_path):
    uri, stopped, plain = two_runs
    c = MlflowClient(uri)
    a, b = c.get_run(stopped["run_id"]), c.get_run(plain["run_id"])
    for run in (a, b):
        assert "None" not in run.data.params.values(), run.data.params
        assert any(k.startswith("system/") for k in run.data.metrics), "a short run still gets system metrics"
    differ = {k for k in set(a.data.params) | set(b.data.params) if a.data.params.get(k) != b.data.params.get(k)}
    assert differ == {"epochs", "lr", "patience"}, differ

    experiment = a.info.experiment_id
    query = urllib.parse.urlencode({"runs": json.dumps([a.info.run_id, b.info.run_id]),
                                     "experiments": json.dumps([experiment])})
    browser.get(f"{links.ui_base(uri)}/#/compare-runs?{query}")
    text = wait_for_text(browser, "Parameters", "lr", "patience")
    assert "None" not in text.split("Parameters", 1)[1].split("Metrics", 1)[0]
    assert "NaN" not in text
    assert shot(browser, tmp_path, "compare").stat().st_size > 10_000

    browser.get(links.experiment_url(uri, experiment))  # lands on the runs table, not the GenAI overview
    wait_for_text(browser, stopped["extra"]["run_name"], plain["extra"]["run_name"])
