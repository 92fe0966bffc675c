"""Orphaned runs in a real SQLite store: whose driver is dead, whose is alive, and what ending one writes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from nnpipe import tracking
from nnpipe.tracking.heartbeat import HEARTBEAT_TAG, HOST_TAG, PROCESS_TAG
from nnpipe.tracking.orphans import STALE_S, end_orphaned_runs, why_dead

# A driver that opens a run, says so, and waits to be killed.
DRIVER = """
import sys, time
from nnpipe import tracking
tracking.configure(sys.argv[1])
with tracking.training_run("orphans", {"lr": 0.1}, run_name="doomed") as run:
    trial = tracking.nested.start_child_run(run.info.run_id, "trial-0", {"lr": 0.1})
    print(run.info.run_id, trial, flush=True)
    time.sleep(600)
"""


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.configure(uri)
    yield uri
    tracking.reset()


def test_a_sigkilled_driver_is_found_and_a_live_one_is_not(store):
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, store], stdout=subprocess.PIPE, text=True)
    try:
        dead_id, trial_id = proc.stdout.readline().split()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert dead_id, "the driver never opened its run"
    with tracking.training_run("orphans", {"lr": 0.2}, run_name="alive") as live:
        assert tracking.run_status(dead_id) == "RUNNING"
        found = end_orphaned_runs()
        assert sorted(o.run_id for o in found) == sorted([dead_id, trial_id])  # its tuning trial too
        assert all(o.reason.startswith(f"the driver process died (pid {proc.pid} ") for o in found)
        assert tracking.run_status(live.info.run_id) == "RUNNING"
        assert end_orphaned_runs() == []  # once only
    dead = tracking.client().get_run(dead_id)
    assert dead.info.status == "FAILED"
    assert dead.data.tags[tracking.FAILURE_TAG].startswith("the driver process died")
    # It ended at its last heartbeat, not at the sweep.
    assert abs(dead.info.end_time - float(dead.data.tags[HEARTBEAT_TAG]) * 1000) < 1000
    assert tracking.run_status(live.info.run_id) == "FINISHED"


def test_a_driver_on_another_machine_is_dead_only_once_its_heartbeat_is_stale():
    now = time.time()
    elsewhere = {HOST_TAG: "node-7", "nnpipe.driver.pid": "4242", PROCESS_TAG: "node-7|boot|pid:[1]/1.00"}
    assert why_dead({**elsewhere, HEARTBEAT_TAG: f"{now - 30:.0f}"}, now) is None
    reason = why_dead({**elsewhere, HEARTBEAT_TAG: f"{now - STALE_S - 5:.0f}"}, now)
    assert reason is not None and "pid 4242 on node-7" in reason and "no heartbeat since" in reason
    # A run from before heartbeats (or not nnpipe's) is left alone: nothing says its driver is gone.
    assert why_dead({"mlflow.runName": "x"}, now) is None


def test_a_trial_on_another_machine_lives_by_its_parents_heartbeat(store):
    """Trials get no heartbeat thread each: while the parent's is fresh, a trial's old one does not end it."""
    c = tracking.client()
    exp_id = c.create_experiment("orphans")
    now = time.time()
    elsewhere = {HOST_TAG: "node-7", "nnpipe.driver.pid": "4242", PROCESS_TAG: "node-7|boot|pid:[1]/1.00"}
    parent = c.create_run(exp_id, run_name="tune", tags={**elsewhere, HEARTBEAT_TAG: f"{now - 10:.0f}"})
    child = c.create_run(exp_id, run_name="trial-0", tags={**elsewhere, HEARTBEAT_TAG: f"{now - 3600:.0f}",
                                                         "mlflow.parentRunId": parent.info.run_id})
    assert end_orphaned_runs(now) == []
    c.set_tag(parent.info.run_id, HEARTBEAT_TAG, f"{now - STALE_S - 5:.0f}")  # the tuning driver went silent
    ended = {o.run_id for o in end_orphaned_runs(now)}
    assert ended == {parent.info.run_id, child.info.run_id}
    assert tracking.run_status(child.info.run_id) == "FAILED"
