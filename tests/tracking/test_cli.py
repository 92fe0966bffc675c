"""``nnpipe models | promote | rollback | history`` on a real SQLite store."""

from __future__ import annotations

import subprocess
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pytest
from typer.testing import CliRunner

from nnpipe import tracking
from nnpipe.cli import app
from tests.tracking.helpers import (
    NNPIPE,
    STRONG,
    WEAK,
    child_env,
    scratch_store,
    train_logged,
)

NAME = "cli-iris"
runner = CliRunner()


@pytest.fixture(scope="module")
def registry(tmp_path_factory, sqlite_template, iris_splits):
    """v1 weak (gated in), v2 strong (gated in, champion), v3 whose weights file is corrupt."""
    ds, splits = iris_splits
    with scratch_store(tmp_path_factory, sqlite_template, "cli-store") as (root, uri):
        v1, _, _ = train_logged(NAME, ds, splits, experiment=NAME, **WEAK)
        tracking.promote_if_better(NAME, v1)
        v2, _, _ = train_logged(NAME, ds, splits, experiment=NAME, **STRONG)
        assert tracking.promote_if_better(NAME, v2).promoted
        v3, _, _ = train_logged(NAME, ds, splits, experiment=NAME, **WEAK)
        # a damaged artifact (disk error, bad copy): v3 can no longer load
        model_id = tracking.get_version(NAME, v3).source.removeprefix("models:/")
        weights = Path(urlparse(mlflow.get_logged_model(model_id).artifact_location).path) / "data" / "nnpipe_model" / "weights.npz"
        weights.write_bytes(b"not a zip file")
        tracking.reset()  # each CLI call configures from --tracking-uri
        yield {"uri": uri, "versions": (v1, v2, v3)}


def cli(registry, *args: str):
    return runner.invoke(app, [*args, "--tracking-uri", registry["uri"]])


def test_models_lists_versions_with_metrics_aliases_and_status(registry):
    result = cli(registry, "models", NAME)
    assert result.exit_code == 0, result.output
    out = result.output
    for col in ("version", "aliases", "status", "test/accuracy", "gate"):
        assert col in out
    lines = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 3}
    assert set(lines) >= {"1", "2", "3"}
    assert "champion" in lines["2"] and "candidate" in lines["3"] and "READY" in lines["1"]
    assert "promoted" in lines["2"]


def test_models_without_a_name_lists_every_model(registry):
    result = cli(registry, "models")
    assert result.exit_code == 0, result.output
    (line,) = [line for line in result.output.splitlines() if NAME in line]
    cells = [c.strip() for c in line.split("│")[1:-1]]
    assert cells[:5] == [NAME, "3", "v2", "v3", "test/accuracy"]


@pytest.mark.parametrize("command", [["models"], ["models", NAME], ["history", NAME], ["rollback", NAME]])
def test_registry_commands_never_create_a_store(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # what an earlier configure() left: the default store
    result = runner.invoke(app, command)
    assert result.exit_code == 1
    assert f"no MLflow store at {tmp_path / 'mlflow.db'}" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["models", "no-such-model"], "no registered model named 'no-such-model'"),
    (["history", "no-such-model"], "no registered model named 'no-such-model'"),
    (["promote", "no-such-model", "1"], "no registered model named 'no-such-model'"),
    (["rollback", "no-such-model"], "no registered model named 'no-such-model'"),
    (["promote", NAME, "99"], f"model '{NAME}' has no version 99"),
    (["rollback", NAME, "--to", "99"], f"model '{NAME}' has no version 99"),
    (["promote", NAME, "two"], "model version must be a positive integer, got 'two'"),
])
def test_unknown_model_or_version_exits_nonzero_with_a_clear_message(registry, args, message):
    result = cli(registry, *args)
    assert result.exit_code == 1, result.output
    assert "error:" in result.output and message in result.output
    assert "Traceback" not in result.output


def test_rollback_refuses_a_version_that_cannot_predict(registry):
    v1, v2, v3 = registry["versions"]
    before = tracking.alias_version(NAME, "champion")
    result = cli(registry, "rollback", NAME, "--to", str(v3), "--reason", "try v3")
    assert result.exit_code == 1, result.output
    # the damaged file no longer matches its digest from registration: refused before loading, by name
    assert (f"refusing to roll back: model '{NAME}' v{v3}: file 'data/nnpipe_model/weights.npz' does not match"
            in result.output)
    assert tracking.alias_version(NAME, "champion") == before
    result = cli(registry, "promote", NAME, str(v3))
    assert result.exit_code == 1, result.output
    assert f"refusing to promote: model '{NAME}' v{v3}: file 'data/nnpipe_model/weights.npz'" in result.output
    assert tracking.alias_version(NAME, "champion") == before
    assert not any(e["action"] == "rollback" and e["to"] == v3 for e in tracking.alias_history(NAME))


def test_promote_rollback_and_history(registry):
    v1, v2, v3 = registry["versions"]
    assert tracking.alias_version(NAME, "champion") == v2
    result = cli(registry, "promote", NAME, str(v1), "--reason", "canary")
    assert result.exit_code == 0, result.output
    assert f"champion v{v2} -> v{v1}" in result.output
    result = cli(registry, "rollback", NAME, "--reason", "canary failed")
    assert result.exit_code == 0, result.output
    assert f"champion v{v1} -> v{v2}" in result.output
    assert tracking.alias_version(NAME, "champion") == v2

    result = cli(registry, "history", NAME)
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.count("│") > 3]
    assert len(rows) == len(tracking.alias_history(NAME)) >= 7
    assert "canary failed" in rows[-1] and "rollback" in rows[-1] and f"v{v1}" in rows[-1]
    assert "canary" in rows[-2] and "promote" in rows[-2]


def test_console_script_exits_nonzero_on_an_unknown_version(registry):
    env = child_env(registry["uri"])
    bad = subprocess.run([NNPIPE, "rollback", NAME, "--to", "42"], env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1
    assert f"error: model '{NAME}' has no version 42" in bad.stderr
