"""What every distributed loop shares: per-epoch reporting, early stopping, checkpoints.

The loops advance in rounds, but they *report* once per epoch-equivalent (one
pass worth of rows), like single-process :func:`nnpipe.training.fit`: the
callbacks, the history, ``patience`` and ``checkpoint_every`` all count epochs,
so a history means the same in every mode and MLflow is not flooded with one
point per 2 ms sync step.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from nnpipe.config import TrainConfig
from nnpipe.distributed import checkpoint as ckpt
from nnpipe.network import Network, NetworkSpec
from nnpipe.training import Callback, DivergenceError, EarlyStopping, FitResult, append_logs, evaluate_arrays

log = logging.getLogger("nnpipe.distributed")


class Reporter:
    """Collects an epoch's logs, validates, calls back, decides on stopping, checkpoints."""

    def __init__(self, spec: NetworkSpec, config: TrainConfig, validation: tuple[np.ndarray, np.ndarray] | None,
                 callbacks: tuple[Callback, ...] | list[Callback], mode: str):
        self.spec, self.config, self.mode = spec, config, mode
        self.net = Network(spec)
        self.validation = validation
        self.callbacks = list(callbacks)
        self.stopper = EarlyStopping(config.patience, config.restore_best)
        self.history: dict[str, list[float]] = {}
        self.start_epoch = 0
        self.resumed_from: str | None = None

    def resume(self) -> dict[str, Any] | None:
        """Load the newest checkpoint of ``config.checkpoint_dir`` (None if there is none)."""
        state = ckpt.load_latest(self.config.checkpoint_dir)
        if state is None:
            return None
        if state.get("mode") != self.mode or state["theta"].shape != (self.spec.n_params,):
            raise ValueError(
                f"checkpoint {state['path']} is for mode {state.get('mode')!r} with {state['theta'].shape[0]} "
                f"parameters; this run is mode {self.mode!r} with {self.spec.n_params}"
            )
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.stopper.restore(state["stopper"], state["best_theta"])
        self.start_epoch = int(state["epoch"]) + 1
        self.resumed_from = state["path"]
        log.info("resuming %s training from %s (epoch %d)", self.mode, state["path"], self.start_epoch)
        return state

    def end_epoch(self, epoch: int, theta: np.ndarray, logs: dict[str, float], *,
                  opt_state: dict | None = None, trainer_states: Any = None) -> bool:
        """Finish ``epoch``: validate, record, checkpoint, call back; True means stop.

        ``trainer_states`` may be a callable, fetched only when a checkpoint is due.
        """
        logs = {k: float(v) for k, v in logs.items()}  # plain floats for MLflow and JSON
        if not np.isfinite(logs["train/loss"]):
            raise DivergenceError(f"training diverged: train loss is {logs['train/loss']} at epoch {epoch}")
        if self.validation is not None:
            for key, value in evaluate_arrays(self.net, theta, *self.validation).items():
                logs[f"val/{key}"] = value
        append_logs(self.history, logs)
        stop = self.stopper.update(epoch, logs.get("val/loss", logs["train/loss"]), theta)
        every = self.config.checkpoint_every
        if every and self.config.checkpoint_dir and (epoch + 1) % every == 0:
            states = trainer_states() if callable(trainer_states) else trainer_states
            ckpt.save(self.config.checkpoint_dir, epoch, theta=theta, opt_state=opt_state, trainer_states=states,
                      meta={"mode": self.mode, "history": self.history, "config": self.config.to_dict(),
                            "stopper": self.stopper.state()},
                      best_theta=self.stopper.best_theta)
        for cb in self.callbacks:
            cb(epoch, logs)
        return stop

    def result(self, theta: np.ndarray, opt_state: dict, last_epoch: int, info: dict[str, Any]) -> FitResult:
        epochs_run = last_epoch + 1
        stopped = self.stopper.patience is not None and epochs_run < self.config.epochs
        if self.stopper.best_theta is not None:
            theta = self.stopper.best_theta
        if self.resumed_from:
            info["resumed_from"] = self.resumed_from
        return FitResult(theta=theta, opt_state=opt_state, history=self.history, epochs_run=epochs_run,
                         best_epoch=self.stopper.best_epoch, stopped_early=stopped, info=info)
