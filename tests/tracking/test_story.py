"""The champion's story in MLflow: descriptions, outside alias moves, ``promote --force``, the history ledger.

One SQLite store per module: v1 weak (gated in), v2 strong (gated in), v3 weak (gated out).
"""

from __future__ import annotations

import json
import re

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from nnpipe import tracking
from nnpipe.cli import app
from nnpipe.tracking import history, story
from tests.tracking.helpers import STRONG, WEAK, scratch_store, train_logged

NAME = "story-iris"
runner = CliRunner()


@pytest.fixture(scope="module")
def registry(tmp_path_factory, sqlite_template, iris_splits):
    ds, splits = iris_splits
    with scratch_store(tmp_path_factory, sqlite_template, "story-store") as (root, uri):
        versions = []
        for cfg, promoted in ((WEAK, True), (STRONG, True), (WEAK, False)):
            v, _, _ = train_logged(NAME, ds, splits, experiment=NAME, **cfg)
            assert tracking.promote_if_better(NAME, v).promoted is promoted
            versions.append(v)
        tracking.reset()
        yield {"uri": uri, "versions": tuple(versions)}


def cli(registry, *args: str):
    return runner.invoke(app, [*args, "--tracking-uri", registry["uri"]])


def outside_client(registry) -> MlflowClient:
    """Another client, as the MLflow UI or a script would use: no nnpipe involved."""
    return MlflowClient(tracking_uri=registry["uri"], registry_uri=registry["uri"])


def test_descriptions_tell_the_champions_story(registry, tmp_path):
    v1, v2, v3 = registry["versions"]
    c = outside_client(registry)
    text = c.get_registered_model(NAME).description.replace(story.PAD, "")
    # every champion statement is dated: true when written, still true after the next move
    assert re.search(rf"\*\*Champion as of 20\d\d-\d\d-\d\d \d\d:\d\d:\d\d UTC:\*\* v{v2} \(set 20[^)]* UTC, gate\)", text)
    assert f"**candidate:** v{v3}" in text
    assert "| when (UTC) | move | from | to | who | why | test/accuracy: from → to |" in text
    rows = [line for line in text.splitlines() if line.startswith("| 20")]
    assert len(rows) == 2 and f"| gate | v{v1} | v{v2} |" in rows[0] and "| gate | – | v1 |" in rows[1]
    v3_text = c.get_model_version(NAME, str(v3)).description
    assert "**Final metrics:**" in v3_text and "`test/accuracy`" in v3_text
    assert "**Gate" in v3_text and "rejected" in v3_text and "never champion" in v3_text
    v2_text = c.get_model_version(NAME, str(v2)).description
    assert "champion from 20" in v2_text and "champion since" not in v2_text and "was champion" not in v2_text
    v1_tags = c.get_model_version(NAME, str(v1)).tags
    assert v1_tags["nnpipe.champion"].startswith("champion from 20") and f"replaced by v{v2}: gate" in v1_tags["nnpipe.champion"]
    # a short versions list: the gate is one readable tag and its sentence, lineage stays on the run
    v3_tags = c.get_model_version(NAME, str(v3)).tags
    assert re.match(rf"rejected 20\S+ \S+ UTC · test/accuracy \S+ vs v{v2} \S+$", v3_tags["nnpipe.gate"])
    assert "does not beat champion" in v3_tags["nnpipe.gate.reason"]
    assert not [k for k in v3_tags if k.startswith("nnpipe.gate.") and k != "nnpipe.gate.reason"]
    gate = tracking.list_versions(NAME)[v3 - 1]["gate"]
    assert gate["decision"] == "rejected" and gate["champion_version"] == str(v2) and float(gate["score"]) > 0
    # the history is one JSON document in a ledger run, not a pile of registered-model tags
    assert not any(k.startswith(history.LEGACY_PREFIX) for k in c.get_registered_model(NAME).tags)
    run_id = history.ledger_run_id(c, NAME)
    events = json.loads(open(c.download_artifacts(run_id, history.ARTIFACT, str(tmp_path))).read())
    assert [e["action"] for e in events if e["alias"] == "champion"] == ["gate", "gate"]
    gate = [e for e in events if e["alias"] == "champion"][-1]
    assert gate["metric"] == "test/accuracy" and gate["to_score"] > gate["from_score"]


def test_a_gate_rejected_version_needs_force_and_the_gate_is_quoted(registry):
    v1, v2, v3 = registry["versions"]
    result = cli(registry, "promote", NAME, str(v3))
    assert result.exit_code == 1
    assert f"the promotion gate rejected v{v3}" in result.output and "does not beat champion" in result.output
    assert "--force" in result.output
    assert tracking.alias_version(NAME, "champion") == v2
    result = cli(registry, "promote", NAME, str(v3), "--force", "--reason", "canary")
    assert result.exit_code == 0, result.output
    assert f"champion v{v2} -> v{v3}" in result.output and f"forced over the promotion gate, which said when v{v3} was registered:" in result.output
    last = tracking.alias_history(NAME, "champion")[-1]
    assert last["action"] == "promote" and "forced over the gate" in last["reason"] and last["reason"].startswith("canary")
    assert cli(registry, "rollback", NAME, "--reason", "undo the canary").exit_code == 0
    assert tracking.alias_version(NAME, "champion") == v2


def test_outside_moves_are_recorded_reported_and_rollback_still_works(registry):
    v1, v2, v3 = registry["versions"]
    assert tracking.alias_version(NAME, "champion") == v2
    c = outside_client(registry)
    c.set_registered_model_alias(NAME, "champion", str(v3))  # what the UI's alias dialog does

    result = cli(registry, "history", NAME)
    assert result.exit_code == 0, result.output
    assert f"moved outside nnpipe: champion v{v2} -> v{v3}" in result.output
    last = tracking.alias_history(NAME, "champion")[-1]
    assert (last["action"], last["from"], last["to"], last["actor"]) == ("outside", v2, v3, history.OUTSIDE_ACTOR)
    assert last["detected"] is True and last["to_score"] < last["from_score"]
    table = result.output[result.output.index("alias history of"):]
    assert "│ outside " in table and "unknown" in table
    # noticed once: a second look reports nothing new
    again = cli(registry, "models", NAME)
    assert again.exit_code == 0 and "moved outside nnpipe" not in again.output
    assert "| outside nnpipe |" in c.get_registered_model(NAME).description.replace(story.PAD, "")

    c.set_registered_model_alias(NAME, "champion", str(v1))  # a second outside move
    result = cli(registry, "models", NAME)
    assert f"moved outside nnpipe: champion v{v3} -> v{v1}" in result.output

    # rollback walks back through the outside reigns: v1 -> v3 (the UI's pick before)
    result = cli(registry, "rollback", NAME, "--reason", "back")
    assert result.exit_code == 0, result.output
    assert f"champion v{v1} -> v{v3}" in result.output
    assert tracking.rollback(NAME, reason="and again") == v2

    # the gate names an outside move it finds, after recording it
    c.set_registered_model_alias(NAME, "champion", str(v1))
    decision = tracking.promote_if_better(NAME, v3)
    assert decision.outside_moves and f"champion v{v2} -> v{v1}" in decision.outside_moves[0]
    assert decision.champion_version == v1 and "moved outside nnpipe" in decision.reason


def test_legacy_tag_history_moves_into_the_ledger(sqlite_store, unique_name):
    c = tracking.client()
    c.create_registered_model(unique_name)
    old = {"seq": 1, "time": "2026-01-01T00:00:00+00:00", "actor": "a", "alias": "champion", "from": None,
           "to": 1, "action": "gate", "reason": "old"}
    c.set_registered_model_tag(unique_name, f"{history.LEGACY_PREFIX}000001", json.dumps(old))
    assert tracking.alias_history(unique_name) == [old]  # read before any migration
    with tracking.store_lock():
        history.record(c, unique_name, "champion", 1, 2, action="promote", reason="new")
    assert [e["reason"] for e in tracking.alias_history(unique_name)] == ["old", "new"]
    assert not any(k.startswith(history.LEGACY_PREFIX) for k in c.get_registered_model(unique_name).tags)


def test_nnpipe_watch_follows_an_outside_move_within_seconds(registry, tmp_path):
    """``nnpipe watch``: the registry pages follow a move made by another client, with no other command run."""
    import signal
    import subprocess
    import time

    from tests.flows.conftest import default_sigint
    from tests.tracking.helpers import NNPIPE, child_env

    v1, v2, v3 = registry["versions"]
    c = outside_client(registry)
    target = v2 if c.get_registered_model(NAME).aliases.get("champion") != v2 else v3
    log = tmp_path / "watch.log"
    with log.open("w") as out:
        proc = subprocess.Popen([NNPIPE, "watch", "--interval", "0.5", "--tracking-uri", registry["uri"]],
                                stdout=out, stderr=subprocess.STDOUT, env=child_env(registry["uri"]),
                                preexec_fn=default_sigint)
    try:
        deadline = time.monotonic() + 120  # the command's own start-up (imports) on a busy machine
        while "watching the aliases" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        c.set_registered_model_alias(NAME, "champion", str(target))
        moved = time.monotonic()
        while f"UTC:** v{target} " not in c.get_registered_model(NAME).description and time.monotonic() - moved < 10:
            time.sleep(0.2)
        assert f"UTC:** v{target} " in c.get_registered_model(NAME).description, log.read_text()
        while "moved outside nnpipe" not in log.read_text() and time.monotonic() - moved < 20:
            time.sleep(0.2)  # the note is printed once the sweep that wrote the pages returns
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    assert "moved outside nnpipe: champion" in log.read_text() and f"-> v{target} of {NAME}" in log.read_text()
    assert tracking.alias_history(NAME, "champion")[-1]["action"] == "outside"
