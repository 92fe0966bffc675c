"""``--warm-start champion``: the nightly retraining continues the champion's weights when the network matches."""

from __future__ import annotations

import pytest

from nnpipe.flows.config import ConfigError, build_config
from nnpipe.flows.pipeline import training_flow

pytestmark = pytest.mark.usefixtures("prefect_harness")


def run(mlflow_uri: str, **over):
    cfg = build_config(overrides={"dataset": "iris", "tracking_uri": mlflow_uri, "model_name": "warm",
                                  "hidden": [8], "mode": "single", **over})
    return training_flow(cfg)


def test_warm_start_begins_from_the_champion_and_records_its_version(mlflow_uri: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
    first = run(mlflow_uri, epochs=1, warm_start="champion")  # nothing to start from yet
    assert client.get_run(first["run_id"]).data.tags["nnpipe.warm_start"] == "seed: warm has no champion yet"
    base = run(mlflow_uri, epochs=30, lr=0.05)  # a trained champion (or not: the gate decides)
    champion = client.get_model_version_by_alias("warm", "champion").version

    warm = run(mlflow_uri, epochs=1, warm_start="champion", lr=1e-9)  # lr ~0: it keeps what it started from
    cold = run(mlflow_uri, epochs=1, lr=1e-9)
    tags = client.get_run(warm["run_id"]).data.tags
    assert tags["nnpipe.warm_start"] == f"champion v{champion}"
    assert "nnpipe.warm_start" not in client.get_run(cold["run_id"]).data.tags
    # the same split (same seed): starting from the champion scores what the champion scored; from the seed it does not
    champ_acc = client.get_run(client.get_model_version("warm", champion).run_id).data.metrics["test/accuracy"]
    assert abs(warm["metrics"]["accuracy"] - champ_acc) < 1e-9, (warm["metrics"], champ_acc)
    assert base["metrics"]["accuracy"] > cold["metrics"]["accuracy"]


def test_a_different_network_starts_from_the_seed_and_says_why(mlflow_uri: str):
    from mlflow import MlflowClient

    run(mlflow_uri, epochs=2)
    other = run(mlflow_uri, epochs=1, hidden=[4, 4], warm_start="champion")
    note = MlflowClient(tracking_uri=mlflow_uri).get_run(other["run_id"]).data.tags["nnpipe.warm_start"]
    assert note.startswith("seed: champion v1's network (4 inputs, hidden [8], 3 outputs) differs"), note


def test_an_unknown_warm_start_is_refused_before_anything_runs():
    with pytest.raises(ConfigError, match="warm_start"):
        build_config(overrides={"warm_start": "latest"})
