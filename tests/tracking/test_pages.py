"""Statements that stay true (issue 23), without a server: dated outcomes, one-line warnings, the gate tag."""

from __future__ import annotations

import re
import subprocess
import sys

from nnpipe.tracking import links, story


def test_a_runs_outcome_is_dated_and_points_at_the_live_alias():
    tags, sentence, at = story.run_outcome("iris-mlp", 3, True, "v3 beats v1", "http://ui/#/models/iris-mlp")
    assert re.fullmatch(r"20\d\d-\d\d-\d\d \d\d:\d\d:\d\d UTC", at)
    assert tags == {"nnpipe.gate": f"iris-mlp v3: promoted to champion at {at} (v3 beats v1)"}
    assert f"the gate promoted it to champion at {at}" in sentence and "(http://ui/#/models/iris-mlp)" in sentence
    _, rejected, _ = story.run_outcome("iris-mlp", 4, False, "v4 does not beat v3")
    assert "did not promote it at 20" in rejected and "is champion" not in rejected


def test_the_gate_tag_reads_back_and_old_tags_still_read():
    line = story.gate_line("rejected", "2026-12-05T19:50:01+00:00", "test/accuracy", "0.9", "2", "0.95")
    assert line == "rejected 2026-12-05 19:50:01 UTC · test/accuracy 0.9 vs v2 0.95"
    gate = story.gate_record({"nnpipe.gate": line, "nnpipe.gate.reason": "v4 does not beat champion v2"})
    assert gate == {"decision": "rejected", "time": "2026-12-05 19:50:01", "metric": "test/accuracy", "score": "0.9",
                    "champion_version": "2", "champion_score": "0.95", "reason": "v4 does not beat champion v2"}
    old = story.gate_record({"nnpipe.gate.decision": "promoted", "nnpipe.gate.score": "0.97", "nnpipe.run_id": "x"})
    assert old == {"decision": "promoted", "score": "0.97"}


def test_version_status_never_says_since_or_was():
    events = [{"alias": "champion", "to": 1, "action": "gate", "time": "2026-12-05T19:50:01", "actor": "a"},
              {"alias": "champion", "from": 1, "to": 2, "action": "outside", "time": "2026-12-05T19:55:02",
               "actor": "unknown (outside nnpipe)"}]
    spans = story.reigns(events)
    v1 = story.status_text(1, {"champion": 2}, spans[1])
    v2 = story.status_text(2, {"champion": 2}, spans[2])
    assert v1 == ("champion from 2026-12-05 19:50:01 UTC (gate by a) until 2026-12-05 19:55:02 UTC "
                  "(replaced by v2: outside nnpipe)")
    assert v2 == "champion from 2026-12-05 19:55:02 UTC (outside nnpipe, by whom unknown)"


def test_run_links_open_the_model_training_view():
    url = links.run_url("http://mlflow:5000", "3", "abc")
    assert url == "http://mlflow:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    assert links.experiment_url("http://mlflow:5000", "3").endswith("#/experiments/3?workflowType=machine_learning")


def test_the_command_prints_a_warning_as_one_line():
    code = ("import warnings; from nnpipe.cli import one_line_warnings; one_line_warnings(); "
            "warnings.warn('batch_size 4 over 2 workers gives 2 rows per step', UserWarning)")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    assert err == "warning: batch_size 4 over 2 workers gives 2 rows per step\n"


def test_a_local_stores_links_use_a_port_that_is_free(monkeypatch):
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:  # something already serves the usual port
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        monkeypatch.setattr(links, "LOCAL_PORT", taken)
        monkeypatch.delenv(links.ENV_UI_URL, raising=False)
        links.local_port.cache_clear()
        try:
            command = links.ui_command("sqlite:///tmp/x/mlflow.db")
            port = int(command.rsplit(" ", 1)[1])
            assert port != taken
            assert links.run_url("sqlite:///tmp/x/mlflow.db", "1", "r").startswith(f"http://127.0.0.1:{port}/#/")
        finally:
            links.local_port.cache_clear()
