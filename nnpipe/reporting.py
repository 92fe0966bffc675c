"""End-of-epoch bookkeeping shared by every training loop, single-process and distributed.

Each loop computes an epoch's training logs its own way; what happens next is
the same everywhere and lives here: stop on a non-finite loss, add the
validation metrics, record the history, decide on early stopping, save a
checkpoint when one is due, call the callbacks. Loops that advance in rounds
report once per epoch-equivalent, so a history, ``patience`` and
``checkpoint_every`` mean the same in every mode.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

import numpy as np

from nnpipe import checkpoint
from nnpipe.config import TrainConfig
from nnpipe.core.evaluation import evaluate_arrays
from nnpipe.core.network import Network, NetworkSpec
from nnpipe.results import Callback, DivergenceError, FitResult
from nnpipe.target import TargetWatch, describe

log = logging.getLogger("nnpipe")

Lazy = Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None


class EarlyStopping:
    """Tracks the monitored loss; keeps a copy of the best parameters."""

    def __init__(self, patience: int | None, restore_best: bool):
        self.patience = patience
        self.restore_best = restore_best
        self.best = np.inf
        self.best_epoch: int | None = None
        self.best_theta: np.ndarray | None = None
        self.wait = 0

    def state(self) -> dict:
        """JSON-serialisable record (the best parameters travel separately, as an array)."""
        best = None if not np.isfinite(self.best) else float(self.best)
        return {"best": best, "best_epoch": self.best_epoch, "wait": self.wait}

    def restore(self, state: dict, best_theta: np.ndarray | None) -> None:
        self.best = np.inf if state["best"] is None else state["best"]
        self.best_epoch, self.wait = state["best_epoch"], state["wait"]
        self.best_theta = best_theta

    def update(self, epoch: int, value: float, theta: np.ndarray) -> bool:
        """Record ``value`` for ``epoch``; return True when training should stop."""
        if value < self.best:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.patience is not None and self.restore_best:
                self.best_theta = theta.copy()
            return False
        self.wait += 1
        return self.patience is not None and self.wait >= self.patience


def append_logs(history: dict[str, list[float]], logs: dict[str, float]) -> None:
    for key, value in logs.items():
        history.setdefault(key, []).append(value)


class Reporter:
    """Validates, records, stops early, checkpoints and calls back once per epoch.

    Parameters
    ----------
    spec : NetworkSpec
    config : TrainConfig
    validation : (X_val, Y_val) or callable, optional
        Arrays evaluated here, or ``f(theta) -> metrics`` (e.g. sums reduced on a cluster).
    callbacks : sequence of callable
        Called as ``callback(epoch, logs)`` after the checkpoint of that epoch.
    mode : str
        Recorded in checkpoints; resuming refuses another mode's checkpoint.
    """

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
        target = config.target()
        self.target = TargetWatch(target) if target is not None else None  # the clock starts now at the latest
        self.stopped_at_target = False

    def resume(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """Load the newest checkpoint of ``config.checkpoint_dir``: ``(arrays, meta)``, or None.

        Restores the history, the early-stopping record and :attr:`start_epoch`;
        the loop restores its own state (parameters, optimizer, streams) from the rest.
        """
        found = checkpoint.load_latest(self.config.checkpoint_dir)
        if found is None:
            return None
        arrays, meta = found
        if meta.get("mode") != self.mode or arrays["theta"].shape != (self.spec.n_params,):
            raise ValueError(
                f"checkpoint {meta['path']} is for mode {meta.get('mode')!r} with {arrays['theta'].shape[0]} "
                f"parameters; this run is mode {self.mode!r} with {self.spec.n_params}"
            )
        self.history = {k: list(v) for k, v in meta["history"].items()}
        self.stopper.restore(meta["stopper"], arrays.get("best_theta"))
        self.start_epoch = int(meta["epoch"]) + 1
        self.resumed_from = meta["path"]
        log.info("resuming %s training from %s (epoch %d)", self.mode, meta["path"], self.start_epoch)
        return arrays, meta

    def end_epoch(self, epoch: int, theta: np.ndarray, logs: dict[str, float], *,
                  arrays: Lazy = None, meta: Lazy = None) -> bool:
        """Finish ``epoch``; True means stop (early stopping).

        ``arrays`` and ``meta`` are the loop's own state for a checkpoint (a
        mapping, or a callable fetched only when a checkpoint is due).
        """
        if not np.isfinite(logs["train/loss"]):
            raise DivergenceError(f"training diverged: train loss is {logs['train/loss']} at epoch {epoch}")
        if self.validation is not None:
            # A callable evaluates where the rows are (a source's validation rows on the workers).
            metrics = (self.validation(theta) if callable(self.validation)
                       else evaluate_arrays(self.net, theta, *self.validation))
            for key, value in metrics.items():
                logs[f"val/{key}"] = value
        append_logs(self.history, logs)
        stop = self.stopper.update(epoch, logs.get("val/loss", logs["train/loss"]), theta)
        if self.target is not None and self.target.update(epoch, logs):
            log.info("%s", describe(self.target.record()))
            if self.config.stop_at_target:
                stop = self.stopped_at_target = True
        every = self.config.checkpoint_every
        if every and self.config.checkpoint_dir and (epoch + 1) % every == 0:
            own_arrays = arrays() if callable(arrays) else (arrays or {})
            own_meta = meta() if callable(meta) else (meta or {})
            checkpoint.save(
                self.config.checkpoint_dir, epoch,
                {**own_arrays, "theta": theta, "best_theta": self.stopper.best_theta},
                {**own_meta, "mode": self.mode, "history": self.history, "config": self.config.to_dict(),
                 "stopper": self.stopper.state()},
            )
        for cb in self.callbacks:
            cb(epoch, logs)
        return stop

    def result(self, theta: np.ndarray, opt_state: dict, info: dict[str, Any]) -> FitResult:
        """The :class:`FitResult`: best parameters when early stopping restores them."""
        epochs_run = len(self.history.get("train/loss", []))
        stopped = self.stopper.patience is not None and epochs_run < self.config.epochs
        info["resumed_from"] = self.resumed_from
        if self.target is not None:
            info["target"] = self.target.record()
        if self.stopped_at_target:  # the model is the epoch that reached the target, not the best loss's
            stopped = epochs_run < self.config.epochs
            note = (f"stopped at the target after epoch {epochs_run} of {self.config.epochs} "
                    f"({describe(info['target'])}); the model is that epoch's") if stopped else None
        else:
            if self.stopper.best_theta is not None:
                theta = self.stopper.best_theta
            note = stop_note(self.history, self.config, epochs_run, self.stopper.best_epoch, stopped,
                             restored=self.stopper.best_theta is not None)
        if note:
            info["early_stopping"] = note
            log.info("%s", note)
        return FitResult(theta=theta, opt_state=opt_state, history=self.history, epochs_run=epochs_run,
                         best_epoch=self.stopper.best_epoch, stopped_early=stopped, info=info)


def stop_note(history: Mapping[str, list[float]], config: TrainConfig, epochs_run: int, best_epoch: int | None,
              stopped: bool, restored: bool) -> str | None:
    """Why training ended where it did and which epoch the model is, in one line (None without early stopping).

    ``early stopping: stopped after epoch 16 of 30, val/loss had not improved for 4 epochs;
    the model is epoch 12's (val/loss 0.0712), restored``. Epochs count from 1, as the console does.
    """
    if config.patience is None or best_epoch is None or (not stopped and best_epoch == epochs_run - 1):
        return None  # no early stopping, or it changed nothing: the last epoch is the model
    monitored = "val/loss" if history.get("val/loss") else "train/loss"
    values = history.get(monitored) or []
    best = f" ({monitored} {values[best_epoch]:.4g})" if best_epoch < len(values) else ""
    if stopped:
        head = (f"early stopping: stopped after epoch {epochs_run} of {config.epochs}, {monitored} had not improved "
                f"for {config.patience} epochs")
    else:
        head = f"early stopping: not triggered ({monitored} improved within every {config.patience} epochs)"
    if restored:
        return f"{head}; the model is epoch {best_epoch + 1}'s{best}, restored"
    return f"{head}; the model is the last epoch's (restore_best is off; the best was epoch {best_epoch + 1}{best})"
