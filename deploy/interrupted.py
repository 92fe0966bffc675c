"""``stack down`` while flow runs train: stop them first, then say so on their MLflow runs and Prefect flow runs.

Order matters. ``down`` stops the Prefect worker and its flow-run processes
first and waits for them, while MLflow, the Prefect server, PostgreSQL and
Dask are still up: a flow run's process gets SIGTERM, Prefect raises
``TerminationSignal`` in it, and nnpipe ends its MLflow run KILLED (nothing is
registered after that point, and the gate never runs, so the champion stays).
Then, still before the servers stop, :func:`end_interrupted` marks what was
interrupted so that nobody has to guess later:

* every MLflow run driven by one of those processes (its ``nnpipe.driver.process``
  tag) gets ``nnpipe.failure`` = "the stack was stopped ..."; one still
  RUNNING (its process was killed before it could end it) is ended KILLED;
* every Prefect flow run those processes ran ends Crashed with the same
  message, if Prefect's own handling did not get that far.

The processes are found before anything is signalled (:func:`flow_run_processes`),
as children of the worker, with the flow run each one runs from its environment.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from nnpipe.deploy.processes import QUIET_ENV

STOPPED = "the stack was stopped (`python -m nnpipe.deploy.stack down`) while this run trained"
FLOW_RUN_ENV = "PREFECT__FLOW_RUN_ID"  # what Prefect's process worker gives each flow run's process


@dataclass(frozen=True)
class FlowRunProcess:
    """One process of a flow run under the worker: its pid, identity tag value and flow run id."""

    pid: int
    identity: str  # what nnpipe.tracking.heartbeat.PROCESS_TAG names on the runs it drives
    flow_run_id: str | None


def flow_run_processes(state: Path, worker: str = "prefect-worker") -> list[FlowRunProcess]:
    """The processes below the stack's worker that run a flow run (empty when none, or no worker)."""
    import psutil

    from nnpipe.tracking.heartbeat import namespace

    pid_file = state / "pids" / f"{worker}.pid"
    if not pid_file.exists():
        return []
    try:
        below = psutil.Process(int(pid_file.read_text())).children(recursive=True)
    except psutil.Error:
        return []
    found = []
    for proc in below:
        try:
            flow_run_id = proc.environ().get(FLOW_RUN_ENV)
            if flow_run_id:
                found.append(FlowRunProcess(proc.pid, f"{namespace()}/{proc.create_time():.2f}", flow_run_id))
        except psutil.Error:  # gone meanwhile, or not ours to read
            continue
    return found


def end_interrupted(state: Path, procs: list[FlowRunProcess]) -> list[str]:
    """Mark the MLflow runs and Prefect flow runs of ``procs`` (already stopped) as stopped by ``down``.

    Returns one line per run it marked. Best effort per run: a store that does
    not answer leaves the run to the orphan sweep of the next command.
    """
    if not procs:
        return []
    info = json.loads((state / "stack.json").read_text()) if (state / "stack.json").exists() else {}
    lines: list[str] = []
    if info.get("mlflow_uri"):
        lines += _end_mlflow_runs(info["mlflow_uri"], procs)
    if info.get("prefect_api_url"):
        lines += _crash_flow_runs(info["prefect_api_url"], {p.flow_run_id for p in procs if p.flow_run_id})
    return lines


def _end_mlflow_runs(uri: str, procs: list[FlowRunProcess]) -> list[str]:
    from nnpipe.tracking.orphans import end_stopped_runs

    return end_stopped_runs(uri, [proc.identity for proc in procs], STOPPED)


def _crash_flow_runs(api_url: str, flow_run_ids: set[str]) -> list[str]:
    os.environ.update(QUIET_ENV)
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Crashed

    lines = []
    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        for flow_run_id in sorted(flow_run_ids):
            state = client.read_flow_run(flow_run_id).state
            if state is not None and state.is_final() and not state.is_crashed():
                continue  # completed (or cancelled) before the signal landed
            client.set_flow_run_state(flow_run_id, Crashed(message=STOPPED.replace("this run", "this flow run")),
                                      force=True)
            lines.append(f"Prefect flow run {flow_run_id}: Crashed")
    return lines
