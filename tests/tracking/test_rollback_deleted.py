"""Rollback when versions were deleted in MLflow since their reign: the deleted are passed over, never named as the target."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from nnpipe import tracking
from nnpipe.cli import app
from tests.tracking.helpers import STRONG, WEAK, scratch_store, train_logged

NAME = "rollback-deleted"
runner = CliRunner()


@pytest.fixture(scope="module")
def registry(tmp_path_factory, sqlite_template, iris_splits):
    """v1 (gated in), v2 (gated in), v3 (forced in): three reigns, champion v3."""
    ds, splits = iris_splits
    with scratch_store(tmp_path_factory, sqlite_template, "rollback-deleted") as (root, uri):
        versions = []
        for cfg in (WEAK, STRONG, WEAK):
            v, _, _ = train_logged(NAME, ds, splits, experiment=NAME, **{**cfg, "epochs": min(cfg["epochs"], 10)})
            versions.append(v)
        assert tracking.promote_if_better(NAME, versions[0]).promoted
        tracking.promote(NAME, versions[1], reason="second")
        tracking.promote(NAME, versions[2], reason="third", force=True)
        tracking.reset()
        yield {"uri": uri, "versions": tuple(versions)}


def test_rollback_passes_over_deleted_versions(registry):
    v1, v2, v3 = registry["versions"]
    c = MlflowClient(tracking_uri=registry["uri"], registry_uri=registry["uri"])
    c.delete_model_version(NAME, str(v2))  # the reign before the champion's, deleted in MLflow
    result = runner.invoke(app, ["rollback", NAME, "--tracking-uri", registry["uri"]])
    assert result.exit_code == 0, result.output
    assert f"champion v{v3} -> v{v1}" in result.output
    assert int(c.get_registered_model(NAME).aliases["champion"]) == v1

    c.delete_model_version(NAME, str(v3))
    c.delete_model_version(NAME, str(v1))  # the champion itself deleted: nothing left to roll back to
    result = runner.invoke(app, ["rollback", NAME, "--tracking-uri", registry["uri"]])
    assert result.exit_code == 1, result.output
    assert "has no previous champion in its history (champion: none; deleted since their reign: v1)" \
        in result.output.replace("\n", " "), result.output
    assert "has no version" not in result.output
