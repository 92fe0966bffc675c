"""Single-process training: the reference every distributed mode is measured against.

The loop owns its buffers (parameters, gradient, optimizer state) and updates
them in place; what it hands back are copies the caller may keep.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from nnpipe.config import TrainConfig
from nnpipe.network import Network, NetworkSpec, count_correct
from nnpipe.optimizers import Optimizer, State, get_optimizer
from nnpipe.schedules import Schedule, get_schedule

# callback(epoch_or_round, logs): logs use the MLflow metric keys ("train/loss", ...).
Callback = Callable[[int, dict[str, float]], None]


class DivergenceError(FloatingPointError):
    """Parameters or loss became non-finite; the message says where."""


@dataclass
class FitResult:
    """What every training mode returns.

    Attributes
    ----------
    theta : ndarray of shape (n_params,)
        Final (or best, with early stopping and ``restore_best``) parameters.
    opt_state : dict of ndarray
        Optimizer state at the end (for resuming).
    history : dict of str to list of float
        One entry per epoch or round for each logged key.
    epochs_run : int
    best_epoch : int or None
    stopped_early : bool
    info : dict
        Mode-specific facts (workers, events such as a lost worker).
    """

    theta: np.ndarray
    opt_state: State
    history: dict[str, list[float]] = field(default_factory=dict)
    epochs_run: int = 0
    best_epoch: int | None = None
    stopped_early: bool = False
    info: dict = field(default_factory=dict)


def make_optimizer(config: TrainConfig) -> tuple[Optimizer, Schedule]:
    """The optimizer and learning-rate schedule a config describes."""
    opt = get_optimizer(config.optimizer, **config.optimizer_hyper())
    sched = get_schedule(config.schedule, config.learning_rate, config.epochs, **config.schedule_kwargs())
    return opt, sched


def clip_by_global_norm(grad: np.ndarray, max_norm: float | None) -> np.ndarray:
    """Scale ``grad`` in place so its L2 norm is at most ``max_norm``."""
    if max_norm is not None:
        norm = float(np.sqrt(np.dot(grad, grad)))
        if norm > max_norm:
            grad *= max_norm / norm
    return grad


def check_finite(theta: np.ndarray, where: str) -> None:
    """Raise :class:`DivergenceError` naming ``where`` if ``theta`` has NaN or inf."""
    if not np.isfinite(theta).all():
        n_bad = int(np.count_nonzero(~np.isfinite(theta)))
        raise DivergenceError(
            f"training diverged: {n_bad} of {theta.size} parameters are non-finite {where}; "
            "lower the learning rate or set clip_norm"
        )


def evaluate_arrays(
    net: Network, theta: np.ndarray, X: np.ndarray, Y: np.ndarray, chunk: int = 16384
) -> dict[str, float]:
    """Mean loss and accuracy (classification) or MSE/MAE/R² (regression), in chunks."""
    n = len(X)
    loss = 0.0
    correct = 0
    sq = ab = 0.0
    for start in range(0, n, chunk):
        Xc, Yc = X[start : start + chunk], Y[start : start + chunk]
        P = net.forward(theta, Xc)
        loss += net.head.loss(P, Yc) * len(Xc)
        if net.head.task == "regression":
            diff = P - Yc
            sq += float(np.sum(diff * diff))
            ab += float(np.sum(np.abs(diff)))
        else:
            correct += count_correct(net.head.task, P, Yc)
    out = {"loss": loss / n}
    if net.head.task == "regression":
        out["mse"] = sq / Y.size
        out["mae"] = ab / Y.size
        var = float(np.sum((Y - Y.mean(axis=0)) ** 2))
        out["r2"] = 1.0 - sq / var if var > 0 else 0.0
    else:
        out["accuracy"] = correct / n
    return out


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


def fit(
    spec: NetworkSpec,
    theta: np.ndarray,
    X: np.ndarray,
    Y: np.ndarray,
    config: TrainConfig,
    *,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    callbacks: tuple[Callback, ...] | list[Callback] = (),
    opt_state: State | None = None,
    train_metrics: bool = True,
) -> FitResult:
    """Train ``theta`` on ``(X, Y)`` in this process with mini-batch gradient descent.

    Parameters
    ----------
    spec : NetworkSpec
    theta : ndarray of shape (n_params,)
        Starting parameters (not modified).
    X : ndarray of shape (n_samples, n_features)
        Scaled features in the network's dtype.
    Y : ndarray
        Targets encoded for the head (:func:`nnpipe.targets.encode_targets`).
    config : TrainConfig
    validation : (X_val, Y_val), optional
        Held-out data for ``val/loss`` and ``val/accuracy`` and early stopping.
    callbacks : sequence of callable
        Called as ``callback(epoch, logs)`` after every epoch.
    opt_state : dict of ndarray, optional
        Optimizer state to resume from.
    train_metrics : bool
        Also count training accuracy from the batches' forward passes.

    Returns
    -------
    FitResult
    """
    net = Network(spec)
    dtype = net.dtype
    X = np.ascontiguousarray(X, dtype=dtype)
    n = len(X)
    if n == 0:
        raise ValueError("cannot train on 0 rows")
    from nnpipe.reporting import Reporter  # it builds on this module's pieces

    opt, schedule = make_optimizer(config)
    theta = np.array(theta, dtype=dtype, copy=True)
    state = opt.init(theta) if opt_state is None else {k: np.array(v, copy=True) for k, v in opt_state.items()}
    rng = np.random.default_rng(config.seed)
    reporter = Reporter(spec, config, validation, callbacks, "single")
    resumed = reporter.resume()
    if resumed is not None:
        arrays, meta = resumed
        theta = arrays["theta"].astype(dtype)
        state = {k: np.array(v, copy=True) for k, v in arrays["opt"].items()}
        rng.bit_generator.state = meta["rng"]
    grad = np.empty_like(theta)
    views, grad_views = net.views(theta), net.views(grad)
    row_stats = np.empty(n, dtype=dtype)
    batch = min(config.batch_size, n)
    want_correct = train_metrics and net.head.task != "regression"
    for epoch in range(reporter.start_epoch, config.epochs):
        lr = schedule(epoch)
        t0 = time.perf_counter()
        perm = rng.permutation(n)
        Xs, Ys = X[perm], Y[perm]
        penalty = 0.0
        correct = 0
        for begin in range(0, n, batch):
            end = min(begin + batch, n)
            Xb, Yb = Xs[begin:end], Ys[begin:end]
            # The loss's log waits for the epoch's end: one call over row_stats.
            l2_term, c = net.step_views(views, grad_views, Xb, Yb, config.l2, want_correct, row_stats[begin:end])
            penalty += l2_term * (end - begin)
            correct += c
            clip_by_global_norm(grad, config.clip_norm)
            opt.step(theta, grad, state, lr, inplace=True)
        elapsed = time.perf_counter() - t0
        train_loss = net.head.loss_from_stats(row_stats) + penalty / n
        logs = {"train/loss": train_loss, "lr": lr, "train/samples_per_s": n / elapsed}
        if want_correct:
            logs["train/accuracy"] = correct / n
        if np.isfinite(train_loss):
            check_finite(theta, f"after epoch {epoch}")
        stop = reporter.end_epoch(epoch, theta, logs, arrays={"opt": state},
                                  meta=lambda: {"rng": rng.bit_generator.state})
        if stop:
            break
    return reporter.result(theta, state, {"mode": "single", "workers": 1})
