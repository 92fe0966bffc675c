"""The schedules are defined once, in deploy/deployments.py; deploy/prefect.yaml is generated from them."""

from __future__ import annotations

import yaml

from nnpipe.deploy.deployments import (
    DEPLOYMENTS,
    ENTRYPOINT,
    PREFECT_YAML,
    prefect_yaml,
)


def test_committed_prefect_yaml_is_the_generated_one():
    assert PREFECT_YAML.read_text() == prefect_yaml(), (
        "deploy/prefect.yaml is out of date: run `python -m nnpipe.deploy.deployments --write-prefect-yaml`")


def test_prefect_yaml_carries_every_deployment_schedule_and_parameter():
    doc = yaml.safe_load(prefect_yaml())
    by_name = {d["name"]: d for d in doc["deployments"]}
    assert set(by_name) == {d.name for d in DEPLOYMENTS}
    for d in DEPLOYMENTS:
        entry = by_name[d.name]
        assert entry["entrypoint"] == ENTRYPOINT
        assert entry["schedules"][0]["cron"] == d.cron
        # The bound parameters validate into the same pipeline config as the served deployment's.
        from nnpipe.flows.config import build_config

        assert build_config(overrides=_flat(entry["parameters"]["config"])).model_dump(mode="json") == \
            d.parameters()["config"]


def _flat(config: dict) -> dict:
    out = {k: v for k, v in config.items() if k != "train"}
    out.update(config.get("train", {}))
    return out
