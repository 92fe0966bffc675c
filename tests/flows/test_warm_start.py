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


def test_the_gate_scores_the_champion_on_the_warm_runs_own_test_split(mlflow_uri: str):
    from mlflow import MlflowClient

    from nnpipe.data.load import load_dataset, split_and_scale
    from nnpipe.flows.tasks import SAME_SPLIT_TAG, WARM_VERSION_TAG
    from nnpipe.tracking import configure, version_model

    client = MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
    run(mlflow_uri, epochs=20, lr=0.05)  # v1, the champion, tested on its own split (seed 0, 20 %)
    champion = client.get_model_version_by_alias("warm", "champion").version
    own = client.get_run(client.get_model_version("warm", champion).run_id).data.metrics["test/accuracy"]
    warm = run(mlflow_uri, epochs=2, warm_start="champion", seed=5, test_size=0.4)  # other rows held out

    data = client.get_run(warm["run_id"]).data
    assert data.tags[WARM_VERSION_TAG] == str(champion)
    # what the run logged as the champion's score is that version's model on exactly this run's test rows
    configure(mlflow_uri)
    splits = split_and_scale(load_dataset("iris"), 0.4, 0.1, 5)
    expected = version_model("warm", int(champion)).evaluate(splits.raw_test, splits.y_test)["accuracy"]
    assert data.metrics["champion/test/accuracy"] == pytest.approx(expected, abs=1e-12)
    # the gate compared those two, said so, and the version records where it started and both scores
    assert "on this run's test split" in warm["decision"] and f"recorded {own:.6g}" in warm["decision"], warm
    version = client.get_model_version("warm", warm["version"])
    assert version.tags["nnpipe.warm_start"] == f"champion v{champion}"
    assert version.tags[SAME_SPLIT_TAG] == f"champion v{champion} test/accuracy={expected:.6g}"
    gate = version.tags["nnpipe.gate"]
    assert f"{expected:.6g}" in gate and f"{data.metrics['test/accuracy']:.6g}" in gate, gate
    beat = data.metrics["test/accuracy"] > expected
    assert warm["promoted"] is beat, (warm["decision"], data.metrics)
