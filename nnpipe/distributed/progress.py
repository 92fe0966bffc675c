"""Training progress on the Dask dashboard, as a callback (the loops stay as they are).

The trainers are actors, and actor calls are not tasks, so the dashboard's
task stream and progress bars show nothing of a training. This callback makes
each epoch visible there: it submits one tiny task with the key
``nnpipe-epoch-<epoch>-<id>`` (the task stream draws each; the *Progress*
bar ``nnpipe-epoch`` counts the epochs done until training ends), and logs the
same logs as a scheduler event under the topic ``nnpipe`` (``Client.get_events``,
and the scheduler's event log on the dashboard's ``/info`` pages).

It also adds ``dist/workers_live`` and ``dist/workers_lost`` (workers gone
since training started) to the logs it is given, for the callbacks after it
(MLflow, Prometheus).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from distributed import Client

log = logging.getLogger(__name__)

TOPIC = "nnpipe"
PREFIX = "nnpipe-epoch"  # one task per epoch: a "round" is sync_every local steps (MLflow's dist/rounds)


def _epoch(step: int, loss: float | None) -> dict[str, Any]:
    """The marker task: it does nothing but carry the epoch's number and loss into the task stream."""
    return {"step": step, "loss": loss}


class DashboardProgress:
    """``callback(step, logs)`` that shows every epoch on the Dask dashboard of ``address``.

    Parameters
    ----------
    address : str
        The scheduler the training runs on (its own connection; closed by :meth:`close`).
    label : str
        Names the training in the events (e.g. the MLflow run name).
    """

    def __init__(self, address: str, label: str = ""):
        self.client = Client(address, set_as_default=False)
        self.label = label
        self.tag = uuid.uuid4().hex[:8]
        self.started = set(self._workers())
        self.futures: list[Any] = []
        self.dashboard_link = self.client.dashboard_link

    def _workers(self) -> list[str]:
        return list(self.client.scheduler_info(n_workers=-1).get("workers", {}))

    def __call__(self, step: int, logs: dict[str, float]) -> None:
        try:
            live = set(self._workers())
            logs["dist/workers_live"] = float(len(live))
            logs["dist/workers_lost"] = float(len(self.started - live))
            loss = logs.get("train/loss")
            fut = self.client.submit(_epoch, int(step), None if loss is None else float(loss),
                                     key=f"{PREFIX}-{int(step) + 1}-{self.tag}", pure=False)
            self.futures.append(fut)  # held until the training ends: the Progress bar counts epochs done
            self.client.log_event(TOPIC, {"label": self.label, "step": int(step) + 1,
                                          **{k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}})
        except Exception as exc:  # the dashboard is a view: never fail a training over it
            log.warning("could not show epoch %d on the Dask dashboard: %s", step + 1, exc)

    def close(self) -> None:
        self.futures.clear()
        self.client.close()

    def __enter__(self) -> "DashboardProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
