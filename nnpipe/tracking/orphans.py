"""Runs whose driver died: the sweep that ends them FAILED instead of RUNNING forever.

A driver killed outright (SIGKILL, the OOM killer, a lost machine) never runs
the code that ends its MLflow run, which would then show RUNNING forever.
Every run :func:`nnpipe.tracking.training_run` opens names its driver and
keeps a heartbeat (:mod:`.heartbeat`).

:func:`end_orphaned_runs`, called when an nnpipe command or flow starts, ends
as FAILED every RUNNING run whose driver is known to be dead: on this machine
its process is gone, and anywhere its heartbeat is older than :data:`STALE_S`.
The run keeps its metrics and logged checkpoints, so it can be resumed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Mapping

from nnpipe.tracking.heartbeat import HEARTBEAT_TAG, HOST_TAG, PID_TAG, PROCESS_TAG, namespace, start_time
from nnpipe.tracking.runs import FAILURE_TAG
from nnpipe.tracking.store import client

log = logging.getLogger("nnpipe.tracking")

DRIVER_DIED = "the driver process died"
STALE_S = 120.0  # eight missed heartbeats: a driver elsewhere that has not written for this long is gone
FLOW_RUN_TAG = "nnpipe.prefect.flow_run_id"  # set by the flows: the Prefect flow run that drives this run
PARENT_TAG = "mlflow.parentRunId"


@dataclass(frozen=True)
class Orphan:
    """A RUNNING run found with a dead driver, and why it was ended."""

    run_id: str
    run_name: str
    experiment_id: str
    reason: str


def why_dead(tags: Mapping[str, str], now: float | None = None, stale_s: float = STALE_S) -> str | None:
    """Why the driver named in ``tags`` is dead, or None while it may be alive (or the run has no heartbeat)."""
    if HEARTBEAT_TAG not in tags:
        return None  # a run from before heartbeats, or not opened by nnpipe: nothing to go on
    now = time.time() if now is None else now
    try:
        beat = float(tags[HEARTBEAT_TAG])
    except ValueError:
        beat = 0.0
    age = now - beat
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(beat))
    host, pid = tags.get(HOST_TAG, "?"), tags.get(PID_TAG, "?")
    their_namespace, _, started = tags.get(PROCESS_TAG, "").rpartition("/")
    if their_namespace == namespace() and pid.isdigit():
        now_started = start_time(int(pid))
        if now_started is not None and abs(now_started - float(started or 0)) < 1.0:
            return None  # that very process is still running
        return f"{DRIVER_DIED} (pid {pid} on {host} is gone; last heartbeat {when}, {age:.0f} s ago)"
    if age > stale_s:
        return f"{DRIVER_DIED} or lost the tracking store (pid {pid} on {host}; no heartbeat since {when}, {age:.0f} s ago)"
    return None


def _with_parent_heartbeat(tags: Mapping[str, str]) -> Mapping[str, str]:
    """A child run's tags with its parent's heartbeat when newer: one driver, one heartbeat (tuning trials)."""
    parent = tags.get(PARENT_TAG)
    if not parent or HEARTBEAT_TAG not in tags:
        return tags
    try:
        beat = client().get_run(parent).data.tags.get(HEARTBEAT_TAG)
    except Exception:  # a parent deleted meanwhile: the child's own tags decide
        return tags
    if beat is None or float(beat) <= float(tags[HEARTBEAT_TAG]):
        return tags
    return {**tags, HEARTBEAT_TAG: beat}


def end_orphaned_runs(now: float | None = None, stale_s: float = STALE_S) -> list[Orphan]:
    """End every RUNNING run whose driver is dead (:func:`why_dead`) as FAILED; returns them.

    The run's ``nnpipe.failure`` tag says why; its end time is its last
    heartbeat. Safe to run from several processes at once (each writes the same).
    """
    c = client()
    exp_ids = [e.experiment_id for e in c.search_experiments()]
    if not exp_ids:
        return []
    found = []
    for run in c.search_runs(exp_ids, filter_string="attributes.status = 'RUNNING'", max_results=1000):
        reason = why_dead(_with_parent_heartbeat(run.data.tags), now, stale_s)
        if reason is None:
            continue
        last = float(run.data.tags.get(HEARTBEAT_TAG, 0) or 0)
        hint = (f"; resume with `nnpipe train --resume-from {run.info.run_id}` if it logged checkpoints"
                if run.data.tags.get("nnpipe.flow") == "nnpipe-train" else "")
        c.set_tag(run.info.run_id, FAILURE_TAG, reason + hint)
        c.set_terminated(run.info.run_id, "FAILED", end_time=int(max(last, run.info.start_time / 1000) * 1000))
        found.append(Orphan(run.info.run_id, run.info.run_name, run.info.experiment_id, reason))
        log.info("run %s (%s) ended FAILED: %s", run.info.run_name, run.info.run_id, reason)
    return found



def died_in_flow_run(flow_run_id: str) -> str | None:
    """The reason a run driven by Prefect flow run ``flow_run_id`` was ended as an orphan, else None."""
    c = client()
    exp_ids = [e.experiment_id for e in c.search_experiments()]
    if not exp_ids:
        return None
    runs = c.search_runs(exp_ids, filter_string=f"tags.`{FLOW_RUN_TAG}` = '{flow_run_id}'", max_results=5)
    for run in runs:
        reason = run.data.tags.get(FAILURE_TAG, "")
        if run.info.status == "FAILED" and reason.startswith(DRIVER_DIED):
            return reason
    return None


def end_stopped_runs(uri: str, identities: list[str], why: str) -> list[str]:
    """End KILLED the runs of these driver processes (their ``PROCESS_TAG``) that were stopped from outside.

    For ``stack down``: the flow-run processes it stopped may have died before
    ending their runs. A run already ended KILLED or FAILED keeps its status
    and gets ``why`` in front of its failure tag; a finished run is left alone.
    Returns one line per run it marked.
    """
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    experiments = [e.experiment_id for e in c.search_experiments()]
    lines = []
    for identity in identities if experiments else []:
        for run in c.search_runs(experiments, f"tags.`{PROCESS_TAG}` = '{identity}'"):
            if run.info.status not in ("RUNNING", "KILLED", "FAILED"):
                continue  # it finished before the signal: nothing was interrupted
            was = run.data.tags.get(FAILURE_TAG)
            c.set_tag(run.info.run_id, FAILURE_TAG, why + (f" ({was})" if was else ""))
            if run.info.status == "RUNNING":
                c.set_terminated(run.info.run_id, "KILLED", end_time=int(time.time() * 1000))
            lines.append(f"MLflow run {run.info.run_name} ({run.info.run_id}): "
                         f"{'KILLED' if run.info.status == 'RUNNING' else run.info.status}")
    return lines
