"""One trial, run as a Dask task on a worker: single-process training that reports every epoch.

Pruning happens here, on the worker, mid-training: after every epoch the
callback reports the validation metric to the study's storage (which every
worker reaches, see :mod:`nnpipe.tuning.study`) and asks the study's pruner,
through Optuna's own ``Trial.should_prune``, whether to stop. A yes raises
``optuna.TrialPruned`` inside the training loop, which ends it at once. The
driver is not in that loop, so it never waits on a round trip per epoch and
a pruned trial frees its worker immediately.

The driver alone sets a trial's final state (it tells the study), so that a
worker that dies leaves a RUNNING trial the driver can record as FAIL.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import optuna

from nnpipe.api import train as train_network
from nnpipe.config import TrainConfig
from nnpipe.data.load import Splits
from nnpipe.tuning.study import get_storage, make_pruner

WORKER_ATTR = "nnpipe.worker"


def objective_value(history: dict[str, list[float]], metric: str, best_epoch: int | None) -> float:
    """The metric at the epoch whose parameters training kept (best epoch with ``restore_best``), else the last."""
    values = history[metric]
    epoch = best_epoch if best_epoch is not None and best_epoch < len(values) else len(values) - 1
    return float(values[epoch])


def run_trial(splits: Splits, train: TrainConfig, hidden: list[int], activation: str, storage: str,
              study_name: str, number: int, pruner: str, metric: str) -> dict[str, Any]:
    """Train trial ``number`` of ``study_name``; a dict with ``status`` complete, pruned, failed or lost.

    ``lost`` means this task already started once for this trial: the worker
    that ran it died and Dask re-ran the task elsewhere. The driver records
    that trial as FAIL and retries its configuration as a new trial, rather
    than mixing two attempts' reports in one trial.
    """
    store = get_storage(storage)
    study = optuna.load_study(study_name=study_name, storage=store, pruner=make_pruner(pruner, train.epochs),
                              sampler=optuna.samplers.RandomSampler())  # the driver samples; the worker only reports
    trial_id = store.get_trial_id_from_study_id_trial_number(store.get_study_id_from_name(study_name), number)
    here = f"{socket.gethostname()}:{os.getpid()}"
    before = store.get_trial(trial_id).user_attrs.get(WORKER_ATTR)
    if before is not None:
        return {"status": "lost", "worker": before, "rerun_on": here}
    store.set_trial_user_attr(trial_id, WORKER_ATTR, here)
    trial = optuna.Trial(study, trial_id)
    history: dict[str, list[float]] = {}

    def report(epoch: int, logs: dict[str, float]) -> None:
        for key, value in logs.items():
            history.setdefault(key, []).append(float(value))
        if metric not in logs:
            raise ValueError(f"metric {metric!r} is not among the epoch's logs {sorted(logs)}; "
                             "tuning needs a validation split (val_size > 0)")
        trial.report(float(logs[metric]), epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch + 1}: {metric}={logs[metric]:.4g}")

    try:
        fit = train_network(splits, train, hidden=tuple(hidden), activation=activation, callbacks=[report],
                            metadata={"optuna_study": study_name, "optuna_trial": number})
    except optuna.TrialPruned as exc:
        return {"status": "pruned", "history": history, "epochs": len(history.get(metric, [])),
                "reason": str(exc), "worker": here}
    except Exception as exc:  # divergence, a config the optimizer rejects: a fact, not worth a retry
        return {"status": "failed", "history": history, "epochs": len(history.get(metric, [])),
                "reason": f"{type(exc).__name__}: {exc}", "worker": here}
    return {"status": "complete", "history": history, "epochs": fit.epochs_run, "model": fit.model,
            "value": objective_value(fit.history, metric, fit.best_epoch if train.patience and train.restore_best else None),
            "best_epoch": fit.best_epoch, "worker": here}
