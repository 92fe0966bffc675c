"""A tuned champion's run page is as rich as a trained one (issue 23): headless Chromium, a real ``mlflow server``.

A small study on a real two-worker cluster registers its best trial; its run
page shows the description, the dataset and the plots, and the parent run
links the registered version. Skipped, saying why, without Chromium.
"""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from nnpipe.config import TrainConfig
from nnpipe.tracking import links
from nnpipe.tuning import tune
from tests.browser import browser, shot, wait_for_text  # noqa: F401  (browser is a fixture)

pytestmark = [pytest.mark.cluster, pytest.mark.server]


@pytest.fixture(scope="module")
def client():
    from nnpipe.distributed.cluster import connect

    with connect(workers=2) as c:
        c.wait_for_workers(2)
        yield c


def test_a_tuned_champions_run_page_has_dataset_plots_and_story(browser, client, mlflow_server, tmp_path):
    name = f"tuned-{tmp_path.name[-8:]}".replace("_", "-")
    result = tune("iris", ["lr=loguniform(1e-3,1e-1)", "optimizer=choice(adam,sgd)"], trials=3, parallel=2, seed=0,
                  train=TrainConfig(epochs=8), hidden=[8], client=client, tracking_uri=mlflow_server,
                  model_name=name, study=name, storage=str(tmp_path / "optuna.log"), experiment=name)
    assert result.registered and result.registered["new"]
    c = MlflowClient(mlflow_server, mlflow_server)
    best = c.get_run(result.best["run_id"])

    browser.get(links.run_url(mlflow_server, best.info.experiment_id, best.info.run_id))
    text = wait_for_text(browser, f"of tuning study {name}", "iris", f"{name} v{result.registered['version']}")
    assert "promoted it to champion at 20" in text or "did not promote it at 20" in text
    assert shot(browser, tmp_path, "tuned-champion-run").stat().st_size > 10_000
    browser.get(links.run_url(mlflow_server, best.info.experiment_id, best.info.run_id).replace(
        "?", "/artifacts?"))
    wait_for_text(browser, "loss.png", "accuracy.png", "confusion_matrix.png")

    browser.get(links.run_url(mlflow_server, best.info.experiment_id, result.parent_run_id))
    text = wait_for_text(browser, f"Tuning study {name}", f"trial {result.best['number']}",
                         f"{name} v{result.registered['version']}")
    assert shot(browser, tmp_path, "tune-parent-run").stat().st_size > 10_000
