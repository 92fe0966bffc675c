"""Single-process training: the reference every distributed mode is measured against.

The loop owns its buffers (parameters, gradient, optimizer state) and updates
them in place; what it hands back are copies the caller may keep.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from nnpipe.blas import step_threads
from nnpipe.config import TrainConfig
from nnpipe.core.fused import FusedLoop
from nnpipe.core.network import Network
from nnpipe.core.optimizers import Optimizer, State, clip_by_global_norm
from nnpipe.core.problem import Problem
from nnpipe.reporting import Reporter
from nnpipe.results import Callback, FitResult, check_finite

log = logging.getLogger("nnpipe")
LOOPS = ("auto", "fused", "general")


def choose_loop(loop: str = "auto") -> tuple[str, str]:
    """The step loop to run, ``"fused"`` or ``"general"``, and why (for the log).

    ``"auto"`` takes the fused loop (:mod:`nnpipe.core.fused`): it computes
    the same parameters bit for bit and is never slower (measured in
    ``bench/bench_core.py``). The general loop stays as the reference it is
    tested against; its step (:meth:`Network.step_views`, then
    :meth:`Optimizer.step`) is the one the distributed workers run.
    """
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {LOOPS}, got {loop!r}")
    if loop == "auto":
        return "fused", "auto: preallocated buffers, the same results as the general loop"
    return loop, "as asked"


class GeneralLoop:
    """The reference step loop: one :meth:`Network.step_views` and one :meth:`Optimizer.step` a batch.

    Takes the arguments of :class:`nnpipe.core.fused.FusedLoop` and computes
    the same parameters; the fused loop is tested against this one.
    """

    def __init__(self, net: Network, opt: Optimizer, theta: np.ndarray, state: State, X: np.ndarray,
                 Y: np.ndarray, batch: int, *, l2: float = 0.0, clip_norm: float | None = None,
                 want_correct: bool = True):
        self.net, self.opt, self.theta, self.state, self.X, self.Y, self.batch = net, opt, theta, state, X, Y, batch
        self.l2, self.clip_norm, self.want_correct = l2, clip_norm, want_correct
        self.grad = np.empty_like(theta)
        self.views, self.grad_views = net.views(theta), net.views(self.grad)
        self.Xbuf = np.empty((batch, *X.shape[1:]), dtype=X.dtype)
        self.Ybuf = np.empty((batch, *Y.shape[1:]), dtype=Y.dtype)

    def epoch(self, perm: np.ndarray, lr: float, row_stats: np.ndarray) -> tuple[float, int]:
        """One pass in the order ``perm``; returns the L2 penalty times rows and the correct rows."""
        n, batch = len(perm), self.batch
        penalty, correct = 0.0, 0
        for begin in range(0, n, batch):
            end = min(begin + batch, n)
            # Gathered by index into reused buffers: no shuffled copy of the training set per epoch.
            idx = perm[begin:end]
            Xb = np.take(self.X, idx, axis=0, out=self.Xbuf[: end - begin], mode="clip")
            Yb = np.take(self.Y, idx, axis=0, out=self.Ybuf[: end - begin], mode="clip")
            # The loss's log waits for the epoch's end: one call over row_stats.
            l2_term, c = self.net.step_views(self.views, self.grad_views, Xb, Yb, self.l2, self.want_correct,
                                             row_stats[begin:end])
            penalty += l2_term * (end - begin)
            correct += c
            clip_by_global_norm(self.grad, self.clip_norm)
            self.opt.step(self.theta, self.grad, self.state, lr, inplace=True)
        return penalty, correct


def fit(problem: Problem, config: TrainConfig, *, callbacks: tuple[Callback, ...] | list[Callback] = (),
        opt_state: State | None = None, train_metrics: bool = True, loop: str = "auto") -> FitResult:
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
    loop : {"auto", "fused", "general"}
        The step loop (:func:`choose_loop`); ``info["loop"]`` says which ran.

    Returns
    -------
    FitResult
    """
    with step_threads(problem.spec, min(config.batch_size, len(problem.X))) as blas:
        result = fit_loop(problem, config, callbacks=callbacks, opt_state=opt_state, train_metrics=train_metrics,
                          loop=loop)
    result.info["blas_threads"] = blas
    return result


def fit_loop(problem: Problem, config: TrainConfig, *, callbacks: tuple[Callback, ...] | list[Callback] = (),
             opt_state: State | None = None, train_metrics: bool = True, loop: str = "auto") -> FitResult:
    """The loop of :func:`fit` (same arguments), with BLAS threads as the caller left them."""
    loop, why = choose_loop(loop)
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
    row_stats = np.empty(n, dtype=dtype)
    batch = min(config.batch_size, n)
    want_correct = train_metrics and net.head.task != "regression"
    log.info("single-process loop: %s (%s; batch %d, %d parameters)", loop, why, batch, spec.n_params)
    steps = (FusedLoop if loop == "fused" else GeneralLoop)(
        net, opt, theta, state, X, Y, batch, l2=config.l2, clip_norm=config.clip_norm, want_correct=want_correct)
    for epoch in range(reporter.start_epoch, config.epochs):
        lr = schedule(epoch)
        t0 = time.perf_counter()
        penalty, correct = steps.epoch(rng.permutation(n), lr, row_stats)
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
    return reporter.result(theta, state, {"mode": "single", "workers": 1, "loop": loop})
