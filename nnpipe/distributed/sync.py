"""``sync``: one optimizer step per global mini-batch, gradients computed on the workers.

The global batch order is single-process :func:`nnpipe.training.fit`'s: epoch
``e`` uses the ``e``-th ``default_rng(seed).permutation(n)``, cut into batches
of ``batch_size``. Each trainer rebuilds that permutation itself (it is a few
integers of work, not data) and takes the rows of each batch that fall in its
shard. The driver averages the shards' mean gradients weighted by their rows
in the batch, which is the batch's mean gradient, and takes the step; so with
a fixed seed the parameters equal single-process training's up to rounding.

Per step the driver sends the parameters to each trainer and gets a gradient
back: ``2 * param bytes`` per worker. If a worker dies, its trainer is rebuilt
and the same step is retried with the same parameters, so the result is
unchanged.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from typing import Any

import numpy as np

from nnpipe.config import TrainConfig
from nnpipe.distributed.loop import Reporter
from nnpipe.distributed.pool import TrainerPool, WorkerLost
from nnpipe.results import DivergenceError, check_finite
from nnpipe.training import clip_by_global_norm


def gather_round(pool: TrainerPool, method: str, args_for, where: str, inline: bool = False) -> tuple[list, float]:
    """Call ``method`` on every trainer and wait for all; rebuild and retry lost ones.

    Returns the results in trainer order and the straggler wait (seconds from
    the first result to the last).
    """
    t0 = time.perf_counter()
    pending = {pool.call(t, method, *args_for(t), inline=inline): t for t in pool.trainers}
    results: dict[int, Any] = {}
    arrivals = []
    while pending:
        done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
        for fut in done:
            t = pending.pop(fut)
            try:
                results[t.id] = pool.received(fut.result())
                arrivals.append(time.perf_counter())
            except WorkerLost as exc:
                new = pool.replace(t, exc, where)
                pending[pool.call(new, method, *args_for(new), inline=inline)] = new
    order = [results[t.id] for t in pool.trainers]
    pool.record_round(time.perf_counter() - t0, max(r[-1] for r in order))
    return order, (max(arrivals) - min(arrivals)) if arrivals else 0.0


def run_sync(pool: TrainerPool, theta: np.ndarray, config: TrainConfig, reporter: Reporter) -> tuple:
    """The sync loop; returns ``(theta, opt_state, last_epoch)``."""
    opt, schedule = config.make_optimizer(), config.make_schedule()
    state = opt.init(theta)
    resumed = reporter.resume()
    if resumed is not None:
        theta = resumed["theta"].astype(theta.dtype)
        state = {k: np.asarray(v) for k, v in resumed["opt_state"].items()}
    grad = np.empty_like(theta)
    n = pool.n_total
    batch = min(config.batch_size, n)
    n_steps = -(-n // batch)
    want_correct = reporter.net.head.task != "regression"
    epoch = reporter.start_epoch - 1
    for epoch in range(reporter.start_epoch, config.epochs):
        lr = schedule(epoch)
        t0 = time.perf_counter()
        loss_sum, correct, wait = 0.0, 0, 0.0
        for step in range(n_steps):
            where = f"in epoch {epoch}, step {step}"
            results, w = gather_round(pool, "sync_grad", lambda t: (theta, epoch, step), where, inline=True)
            wait += w
            rows = sum(r[2] for r in results)
            grad.fill(0.0)
            for t, (g, l_sum, r, c, secs) in zip(pool.trainers, results):
                t.busy_s += secs
                t.rows += r
                if r:
                    if not np.isfinite(g).all():
                        raise DivergenceError(f"training diverged: non-finite gradient from worker {t.address} "
                                              f"(trainer {t.id}, shard {t.shard.index}) {where}")
                    grad += (r / rows) * g  # the shard's share of the batch mean
                loss_sum += l_sum
                correct += c
            clip_by_global_norm(grad, config.clip_norm)
            opt.step(theta, grad, state, lr, inplace=True)
            check_finite(theta, f"after the update {where}")
        elapsed = time.perf_counter() - t0
        logs = {"train/loss": loss_sum / n, "lr": lr, "train/samples_per_s": n / elapsed,
                "dist/straggler_wait_s": wait, **pool.per_worker_logs()}
        if want_correct:
            logs["train/accuracy"] = correct / n
        if reporter.end_epoch(epoch, theta, logs, opt_state=state):
            break
    return theta, state, epoch
