"""Single-process training: the reference every distributed mode is measured against.

The loop owns its buffers (parameters, gradient, optimizer state) and updates
them in place; what it hands back are copies the caller may keep.
"""

from __future__ import annotations

import time

import numpy as np

from nnpipe.blas import step_threads
from nnpipe.config import TrainConfig
from nnpipe.core.network import Network
from nnpipe.core.optimizers import State
from nnpipe.core.problem import Problem
from nnpipe.reporting import Reporter
from nnpipe.results import Callback, FitResult, check_finite


def clip_by_global_norm(grad: np.ndarray, max_norm: float | None) -> np.ndarray:
    """Scale ``grad`` in place so its L2 norm is at most ``max_norm``."""
    if max_norm is not None:
        norm = float(np.sqrt(np.dot(grad, grad)))
        if norm > max_norm:
            grad *= max_norm / norm
    return grad


def fit(problem: Problem, config: TrainConfig, *, callbacks: tuple[Callback, ...] | list[Callback] = (),
        opt_state: State | None = None, train_metrics: bool = True) -> FitResult:
    """Train ``problem.theta`` on ``problem``'s rows in this process with mini-batch gradient descent.

    BLAS runs with one thread while the network is small
    (:func:`nnpipe.blas.step_threads`); ``info["blas_threads"]`` says what was decided.

    Parameters
    ----------
    problem : Problem
        The network, starting parameters, training rows and optional
        validation rows (:class:`nnpipe.core.problem.Problem`; ``theta`` is not modified).
    config : TrainConfig
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
    with step_threads(problem.spec, min(config.batch_size, len(problem.X))) as blas:
        result = fit_loop(problem, config, callbacks=callbacks, opt_state=opt_state, train_metrics=train_metrics)
    result.info["blas_threads"] = blas
    return result


def fit_loop(problem: Problem, config: TrainConfig, *, callbacks: tuple[Callback, ...] | list[Callback] = (),
             opt_state: State | None = None, train_metrics: bool = True) -> FitResult:
    """The loop of :func:`fit` (same arguments), with BLAS threads as the caller left them."""
    spec, X, Y = problem.spec, problem.X, problem.Y
    net = Network(spec)
    dtype = net.dtype
    n = len(X)
    opt, schedule = config.make_optimizer(), config.make_schedule()
    theta = np.array(problem.theta, dtype=dtype, copy=True)
    state = opt.init(theta) if opt_state is None else {k: np.array(v, copy=True) for k, v in opt_state.items()}
    rng = np.random.default_rng(config.seed)
    reporter = Reporter(spec, config, problem.validation, callbacks, "single")
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
    Xbuf, Ybuf = np.empty((batch, *X.shape[1:]), dtype=X.dtype), np.empty((batch, *Y.shape[1:]), dtype=Y.dtype)
    want_correct = train_metrics and net.head.task != "regression"
    for epoch in range(reporter.start_epoch, config.epochs):
        lr = schedule(epoch)
        t0 = time.perf_counter()
        perm = rng.permutation(n)
        penalty = 0.0
        correct = 0
        for begin in range(0, n, batch):
            end = min(begin + batch, n)
            # Gathered by index into reused buffers: no shuffled copy of the training set per epoch.
            idx = perm[begin:end]
            Xb = np.take(X, idx, axis=0, out=Xbuf[: end - begin], mode="clip")
            Yb = np.take(Y, idx, axis=0, out=Ybuf[: end - begin], mode="clip")
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
