"""The flow run's markdown artefact links to pages that exist on the real MLflow server; flow runs say what they did."""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
import uuid

import pytest

from nnpipe.flows.config import build_config
from nnpipe.flows.pipeline import artifact_key, training_flow

pytestmark = [pytest.mark.server, pytest.mark.usefixtures("prefect_harness")]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        assert r.status == 200, url
        return json.loads(r.read())


def read_artifact(key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:  # every run writes a new version of the key: the newest
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                      sort=ArtifactSort.CREATED_DESC)
    assert found, f"no artefact {key!r}"
    return found[0].data


def flow_run_name(flow_run_id: str) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).name


def test_artifact_links_work_and_compare_with_the_champion(mlflow_server, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    name = f"artifact-{uuid.uuid4().hex[:8]}"
    first = training_flow(build_config(overrides={"epochs": 1, "lr": 1e-4, "model_name": name, "hidden": [8],
                                                  "tracking_uri": mlflow_server}))
    second = training_flow(build_config(overrides={"epochs": 30, "lr": 1e-2, "model_name": name, "hidden": [8],
                                                   "tracking_uri": mlflow_server}))
    assert first["promoted"] and second["version"] == "2"
    text = read_artifact(artifact_key("train", name))

    assert "127.0.0.1:5000" not in text and "`" not in text  # the server's own address; no literal backticks
    links = dict(re.findall(r"\[([^\]]+)\]\((http[^)]+)\)", text))
    run_url, version_url, registry_url = (links[second["extra"]["run_name"]], links[f"{name} v2"], links[name])
    assert all(u.startswith(mlflow_server + "/#/") for u in (run_url, version_url, registry_url))
    # each link names something the server has
    run_id = run_url.split("?")[0].rsplit("/", 1)[1]
    assert run_id == second["run_id"]
    assert get_json(f"{mlflow_server}/api/2.0/mlflow/runs/get?run_id={run_id}")["run"]["info"]["status"] == "FINISHED"
    quoted = urllib.parse.quote(name)
    assert version_url.endswith(f"/#/models/{quoted}/versions/2")
    got = get_json(f"{mlflow_server}/api/2.0/mlflow/model-versions/get?name={quoted}&version=2")
    assert got["model_version"]["run_id"] == run_id
    assert get_json(f"{mlflow_server}/api/2.0/mlflow/registered-models/get?name={quoted}")["registered_model"]["name"] == name
    with urllib.request.urlopen(run_url, timeout=30) as page:  # the UI itself answers
        assert page.status == 200
    # validation metrics, and the champion's score beside the candidate's
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:4]]
            for line in text.splitlines() if line.startswith("| test/") or line.startswith("| val/")}
    assert "val/accuracy" in rows and "test/accuracy" in rows
    candidate, champion = rows["test/accuracy"]
    assert float(candidate) == pytest.approx(second["metrics"]["accuracy"], abs=1e-4)
    assert float(champion) == pytest.approx(first["metrics"]["accuracy"], abs=1e-4)
    assert "champion before (v1)" in text

    # the flow run is named after what it trained and what it became
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=f"{name} v2")))
    assert [r.name for r in runs] == [f"iris-single-8 → {name} v2"]
