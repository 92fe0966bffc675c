"""The one distributed training loop; a mode only brings its merge rule.

:func:`run` owns what every mode shares: resuming from a checkpoint, the
learning rate of each epoch (schedule, worker scaling and warm-up), the
synchronous warm-up epochs of ``local-sgd`` and ``async`` (post-local-SGD),
per-trainer accounting (:class:`EpochTally`), divergence checks
(:func:`check_update`), the epoch log and the checkpoint contents. A mode is
a :class:`MergeRule`: ``run_epoch`` makes the epoch's calls to the trainers
and folds their results into the global parameters (average gradients,
average parameters, or merge as results arrive).

Every trainer result ends with ``(loss_sum, rows, correct, seconds)``; the
tally turns those into ``train/loss``, ``train/accuracy``,
``train/samples_per_s`` and ``worker/<id>/samples_per_s``.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from typing import Any, Callable, NamedTuple

import numpy as np

from nnpipe.config import TrainConfig
from nnpipe.distributed.protocol import Pool
from nnpipe.distributed.reporter import Reporter
from nnpipe.distributed.round_size import RoundRetuner
from nnpipe.distributed.rpc import WorkerLost
from nnpipe.results import DivergenceError

log = logging.getLogger("nnpipe.distributed")

MIN_ROWS_PER_STEP = 8  # below this a worker's step is mostly overhead, and its gradient mostly noise


class EpochTally:
    """One epoch's rows, loss and correct predictions, and each trainer's compute time."""

    def __init__(self, want_correct: bool):
        self.want_correct = want_correct
        self.loss_sum, self.rows, self.correct = 0.0, 0, 0
        self.t0 = time.perf_counter()

    def add(self, trainer: Any, loss_sum: float, rows: int, correct: int, seconds: float) -> None:
        """Count one trainer result (the tail of every trainer method's return value)."""
        trainer.busy_s += seconds
        trainer.rows += rows
        self.loss_sum += loss_sum
        self.rows += rows
        self.correct += correct

    def logs(self, lr: float, pool: Pool) -> dict[str, float]:
        rows = max(self.rows, 1)
        out = {"train/loss": self.loss_sum / rows, "lr": lr,
               "train/samples_per_s": self.rows / max(time.perf_counter() - self.t0, 1e-9),
               **pool.per_worker_logs()}
        if self.want_correct:
            out["train/accuracy"] = self.correct / rows
        return out


def check_update(values: np.ndarray | None, trainer: Any, what: str, where: str) -> None:
    """Raise :class:`DivergenceError` naming the worker, trainer and shard if ``values`` is not finite."""
    if values is not None and not np.isfinite(values).all():
        raise DivergenceError(f"training diverged: worker {trainer.address} (trainer {trainer.id}, shard "
                              f"{trainer.shard.index}) sent non-finite {what} {where}")


class Gathered(NamedTuple):
    """One round's results (:func:`gather_round`), in trainer order."""

    payloads: list  # each result's first item
    rows: list[int]
    wait_s: float  # straggler wait: seconds from the first result to the last
    wall_s: float  # from the first call to the last result
    compute_s: float  # the trainers' mean compute inside the round


def gather_round(pool: Pool, method: str, args_for: Callable[[Any], tuple], where: str, tally: EpochTally,
                 inline: bool = False) -> Gathered:
    """Call ``method`` on every trainer and wait for all; rebuild and retry lost ones.

    The results' accounting goes to ``tally``.
    """
    pool.rebalance(where)
    t0 = time.perf_counter()
    pending = {pool.call(t, method, *args_for(t), inline=inline): t for t in pool.trainers}
    results: dict[int, Any] = {}
    arrivals = []
    while pending:
        for fut in pool.wait(pending):
            t = pending.pop(fut)
            try:
                results[t.id] = pool.received(fut.result())
                arrivals.append(time.perf_counter())
            except WorkerLost as exc:
                new = pool.replace(t, exc, where)
                pending[pool.call(new, method, *args_for(new), inline=inline)] = new
    order = [results[t.id] for t in pool.trainers]
    for t, r in zip(pool.trainers, order):
        tally.add(t, *r[1:])
    wall = time.perf_counter() - t0
    pool.record_round(wall, max(r[-1] for r in order))
    wait = (max(arrivals) - min(arrivals)) if arrivals else 0.0
    return Gathered([r[0] for r in order], [int(r[2]) for r in order], wait, wall,
                    float(np.mean([r[-1] for r in order])))


def trainer_states(pool: Pool) -> dict[int, dict]:
    """Each shard's trainer state (optimizer, stream), fetched for a checkpoint."""
    out = {}
    for t in list(pool.trainers):
        if t.shard.index not in out:  # a lost trainer is rebuilt and its (fresh) state taken
            out[t.shard.index] = pool.call_sync(t, "get_state", where="fetching states for a checkpoint")
    return out


def restore_trainers(pool: Pool, states: dict[int, dict]) -> None:
    """Give every trainer its shard's saved state (or, with ``opt`` only, that optimizer state)."""
    for t in list(pool.trainers):
        state = states.get(t.shard.index)
        if state is not None:
            pool.call_sync(t, "set_state", state, where="restoring trainer states")


class MergeRule:
    """What a mode brings to :func:`run`; see :mod:`.sync`, :mod:`.local_sgd`, :mod:`.async_`."""

    #: Trainers keep optimizer state and streams of their own (checkpointed with the run).
    trainer_state = False

    def __init__(self, pool: Pool, config: TrainConfig, theta: np.ndarray):
        self.pool, self.config = pool, config
        self.outer: Any = None  # an :class:`.outer.OuterOptimizer` when the rule has one
        self.k = config.sync_every  # local steps per round (local-sgd, async); the retuner may change it
        self.retuner: RoundRetuner | None = None  # set by run_mode when the round size was chosen for the user
        self.min_k = 1  # the retuner never chooses fewer local steps than this

    def observe_round(self, wall_s: float, compute_s: float, rows: float) -> None:
        """Show the retuner one round's times (see :class:`nnpipe.distributed.round_size.RoundRetuner`)."""
        if self.retuner is None:
            return
        k = self.retuner.observe(wall_s, compute_s, rows)
        if k is not None:
            f = self.retuner.facts
            k = max(k, self.min_k)
            f["round/sync_every"] = float(k)
            log.info("round size re-chosen after %d rounds: sync_every %d -> %d (a round cost each trainer "
                     "%.2f ms of waiting, %.2f us/row of compute; expected coordination %.1f%%)",
                     f["round/retuned_after"], self.k, k, 1e3 * f["round/measured_idle_s"],
                     1e6 * f["round/measured_row_s"], 100 * f["round/expected_coordination_share"])
            self.k = k

    def run_epoch(self, epoch: int, lr: float, theta: np.ndarray, tally: EpochTally) -> dict[str, float]:
        """Train one epoch-equivalent, updating ``theta`` in place; returns the mode's ``dist/`` logs."""
        raise NotImplementedError

    def driver_state(self) -> dict[str, np.ndarray]:
        """The driver's optimizer state (checkpointed; restored by :meth:`load`): the outer optimizer's."""
        return self.outer.state if self.outer is not None else {}

    def load(self, opt_state: dict[str, np.ndarray]) -> None:
        """Restore :meth:`driver_state` from a checkpoint."""
        if self.outer is not None:
            self.outer.load(opt_state)

    def finish(self) -> None:
        """Called once after the last epoch (or on an error).

        What it leaves in ``pool.rule_info`` goes to ``FitResult.info``.
        """
        self.pool.rule_info = dict(self.retuner.facts) if self.retuner is not None else {}

    def final_opt_state(self) -> dict[str, np.ndarray]:
        """``FitResult.opt_state``: trainer 0's when trainers step with their own optimizer, else the driver's."""
        return self.pool.final_opt_state() if self.trainer_state else self.driver_state()


def epoch_lr(config: TrainConfig, n_workers: int) -> Callable[[int], float]:
    """The learning rate of each epoch: the schedule, scaled with the worker count and warmed up.

    Scaling and warm-up apply to ``local-sgd`` and ``async`` only (``sync``
    keeps one global batch, whatever the worker count).
    """
    schedule = config.make_schedule()
    if config.mode == "sync":
        return schedule
    target = {"none": 1.0, "linear": float(n_workers), "sqrt": math.sqrt(n_workers)}[config.lr_scaling]
    start = 1.0 if target != 1.0 else 1.0 / n_workers
    ramp = config.lr_warmup_epochs

    def lr(epoch: int) -> float:
        if ramp and epoch < ramp:
            factor = start + (target - start) * (epoch + 1) / ramp
        else:
            factor = target
        return schedule(epoch) * factor

    return lr


def rows_per_step_warning(config: TrainConfig, shard_rows: list[int]) -> str | None:
    """A message when a worker would get fewer than ``MIN_ROWS_PER_STEP`` rows per step, else None."""
    n = len(shard_rows)
    if config.mode == "sync":
        per = config.batch_size / n
        if per < MIN_ROWS_PER_STEP:
            return (f"sync with batch_size={config.batch_size} and {n} workers gives each worker about "
                    f"{per:.1g} rows per step (fewer than {MIN_ROWS_PER_STEP}): every step is a round trip for "
                    f"almost no compute. Use --batch-size {MIN_ROWS_PER_STEP * n} or more, fewer workers, or "
                    f"--mode local-sgd (batch_size is then per worker)")
        return None
    per = min(config.batch_size, min(shard_rows))
    if per < MIN_ROWS_PER_STEP:
        return (f"{config.mode} with batch_size={config.batch_size} and shards of {min(shard_rows)} rows gives a "
                f"worker {per} rows per step (fewer than {MIN_ROWS_PER_STEP}). Use --batch-size "
                f"{MIN_ROWS_PER_STEP} or more, or fewer workers")
    return None


def run(pool: Pool, theta: np.ndarray, config: TrainConfig, reporter: Reporter, rule: MergeRule,
        warmup: MergeRule | None = None) -> tuple[np.ndarray, dict, int]:
    """Train ``theta`` in place with ``rule``; returns ``(theta, opt_state, last_epoch)``.

    ``warmup`` (a sync rule) trains the first ``config.sync_warmup_epochs()``
    epochs; when ``rule`` takes over, every trainer gets the warm-up's
    optimizer state, as post-local-SGD workers share theirs.
    """
    n_warm = config.sync_warmup_epochs() if warmup is not None else 0
    resumed = reporter.resume()
    if resumed is not None:
        theta[...] = resumed["theta"]
        if reporter.start_epoch <= n_warm and n_warm:
            warmup.load(resumed["opt_state"])
        else:
            rule.load(resumed["opt_state"])
            if rule.trainer_state:
                restore_trainers(pool, resumed["trainer_states"])
    lr_of = epoch_lr(config, len(pool.shards))
    want_correct = reporter.net.head.task != "regression"
    epoch = reporter.start_epoch - 1
    try:
        for epoch in range(reporter.start_epoch, config.epochs):
            active = warmup if epoch < n_warm else rule
            if n_warm and epoch == n_warm and rule.trainer_state:
                opt = warmup.driver_state()
                restore_trainers(pool, {t.shard.index: {"opt": opt} for t in pool.trainers})
            lr = lr_of(epoch)
            tally = EpochTally(want_correct)
            extra = active.run_epoch(epoch, lr, theta, tally)
            logs = {**tally.logs(lr, pool), **extra}
            fetch = (lambda: trainer_states(pool)) if active.trainer_state else None
            if reporter.end_epoch(epoch, theta, logs, opt_state=active.driver_state(), trainer_states=fetch):
                break
    finally:
        rule.finish()
    final = warmup if (warmup is not None and epoch < n_warm) else rule
    return theta, final.final_opt_state(), epoch


def warn_small_steps(config: TrainConfig, shard_rows: list[int]) -> None:
    """Warn (and log) when :func:`rows_per_step_warning` has something to say."""
    msg = rows_per_step_warning(config, shard_rows)
    if msg:
        log.warning(msg)
        warnings.warn(msg, UserWarning, stacklevel=3)
