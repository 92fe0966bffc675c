"""At the start of a flow: end what a driver killed outright left running.

The MLflow side (:func:`nnpipe.tracking.end_orphaned_runs`) ends a RUNNING
run whose driver is dead as FAILED. Its Prefect flow run would still show
Running, as Prefect has no heartbeat for a flow run started outside a
deployment's worker; :func:`end_orphans` moves each flow run whose MLflow run
ended that way to Crashed, with the same reason. Both sides are idempotent, so
two flows starting at once do no harm.
"""

from __future__ import annotations

import logging
from typing import Any

from nnpipe import tracking
from nnpipe.flows.progress import announce
from nnpipe.tracking.orphans import FLOW_RUN_TAG, died_in_flow_run

log = logging.getLogger("nnpipe.flows")

__all__ = ["FLOW_RUN_TAG", "current_flow_run_tags", "end_orphans"]


def current_flow_run_tags() -> dict[str, str]:
    """``{FLOW_RUN_TAG: id}`` of the flow run this code runs in (empty outside one)."""
    from prefect.runtime import flow_run

    return {FLOW_RUN_TAG: str(flow_run.id)} if flow_run.id else {}


def end_orphans() -> list[tracking.Orphan]:
    """End orphaned MLflow runs (FAILED) and their Prefect flow runs (Crashed); say so once per run."""
    orphans = tracking.end_orphaned_runs()
    for o in orphans:
        announce(f"note: run {o.run_name} ({o.run_id}) was still RUNNING; ended it FAILED: {o.reason}")
    try:
        for flow_run_id, reason in _crash_flow_runs():
            announce(f"note: Prefect flow run {flow_run_id} ended Crashed: {reason}")
    except Exception as exc:  # the sweep must never stop the run that is starting
        log.warning("could not check Prefect for orphaned flow runs: %r", exc)
    return orphans


def _crash_flow_runs() -> list[tuple[str, str]]:
    """Move every Running flow run whose MLflow run ended as an orphan to Crashed."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.runtime import flow_run
    from prefect.states import Crashed

    me = str(flow_run.id) if flow_run.id else None
    crashed: list[tuple[str, str]] = []
    with get_client(sync_client=True) as c:
        running: list[Any] = c.read_flow_runs(flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))))
        for fr in running:
            if str(fr.id) == me:
                continue
            reason = died_in_flow_run(str(fr.id))
            if reason is not None:
                c.set_flow_run_state(fr.id, Crashed(message=reason), force=True)
                crashed.append((str(fr.id), reason))
    return crashed
