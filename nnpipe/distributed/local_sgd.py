"""``local-sgd`` (parameter averaging): K local steps per trainer, then a row-weighted mean.

Each trainer keeps its own optimizer state and random stream between rounds
and walks its shard in batches of ``batch_size``. A round sends the global
parameters to every trainer (``param bytes`` each) and gets its parameters
back (``param bytes`` each); the new global parameters are the average of the
contributing trainers weighted by their shards' rows. With ``sync_every=1``,
plain SGD and full-shard batches this is exactly a ``sync`` step.

An epoch is ``ceil(max shard rows / batch_size)`` local steps, i.e. every
shard passes once; its last round may take fewer than K steps.
"""

from __future__ import annotations

import time

import numpy as np

from nnpipe.config import TrainConfig
from nnpipe.distributed.loop import Reporter
from nnpipe.distributed.pool import TrainerPool
from nnpipe.distributed.sync import gather_round
from nnpipe.results import DivergenceError


def weighted_average(thetas: list[np.ndarray], rows: list[int], out: np.ndarray | None = None) -> np.ndarray:
    """Row-weighted mean of the contributing trainers' parameters.

    Parameters
    ----------
    thetas : list of ndarray of shape (n_params,)
        One per contributing trainer (absent trainers are simply not listed).
    rows : list of int
        Each contributor's shard rows; the weights are ``rows / sum(rows)``.
    """
    if len(thetas) != len(rows) or not thetas:
        raise ValueError(f"need one row count per parameter vector, got {len(thetas)} vectors and rows={rows!r}")
    total = float(sum(rows))
    if total <= 0:
        raise ValueError(f"contributing rows must sum to > 0, got rows={rows!r}")
    out = np.zeros_like(thetas[0]) if out is None else out
    out.fill(0.0)
    for theta_i, r in zip(thetas, rows):
        out += (r / total) * theta_i
    return out


def consensus_distance(thetas: list[np.ndarray], mean: np.ndarray) -> float:
    """Mean L2 distance of the trainers' parameters from their average."""
    return float(np.mean([np.linalg.norm(t - mean) for t in thetas]))


def trainer_states(pool: TrainerPool) -> dict[int, dict]:
    """Each shard's trainer state (optimizer, stream), fetched for a checkpoint."""
    out = {}
    for t in pool.trainers:
        if t.shard.index not in out:
            out[t.shard.index] = pool.received(pool.call(t, "get_state").result(), per_round=False)
    return out


def restore_trainers(pool: TrainerPool, states: dict[int, dict]) -> None:
    for t in pool.trainers:
        if t.shard.index in states:
            pool.call(t, "set_state", states[t.shard.index]).result()


def resume_trainers(pool: TrainerPool, theta: np.ndarray, reporter: Reporter) -> np.ndarray:
    """Parameters to start from: the newest checkpoint's (every trainer's state restored too), else ``theta``."""
    resumed = reporter.resume()
    if resumed is None:
        return theta
    restore_trainers(pool, resumed["trainer_states"])
    return resumed["theta"].astype(theta.dtype)


def run_local_sgd(pool: TrainerPool, theta: np.ndarray, config: TrainConfig, reporter: Reporter) -> tuple:
    """The local-SGD loop; returns ``(theta, opt_state, last_epoch)`` (opt state: trainer 0's)."""
    schedule = config.make_schedule()
    theta = resume_trainers(pool, theta, reporter)
    K = config.sync_every
    batch = config.batch_size
    steps_per_epoch = -(-max(s.rows for s in pool.shards) // batch)
    want_correct = reporter.net.head.task != "regression"
    avg = np.empty_like(theta)
    epoch = reporter.start_epoch - 1
    rnd = 0
    for epoch in range(reporter.start_epoch, config.epochs):
        lr = schedule(epoch)
        t0 = time.perf_counter()
        loss_sum, rows_seen, correct, wait, dist = 0.0, 0, 0, 0.0, []
        done_steps = 0
        while done_steps < steps_per_epoch:
            k = min(K, steps_per_epoch - done_steps)
            where = f"in round {rnd} (epoch {epoch})"
            results, w = gather_round(pool, "local_round", lambda t: (theta, k, lr), where)
            wait += w
            thetas, rows = [], []
            for t, (theta_i, l_sum, r, c, secs) in zip(pool.trainers, results):
                if not np.isfinite(theta_i).all():
                    raise DivergenceError(f"training diverged: worker {t.address} (trainer {t.id}, shard "
                                          f"{t.shard.index}) returned non-finite parameters {where}")
                thetas.append(theta_i)
                rows.append(t.shard.rows)
                t.busy_s += secs
                t.rows += r
                loss_sum += l_sum
                rows_seen += r
                correct += c
            weighted_average(thetas, rows, out=avg)
            dist.append(consensus_distance(thetas, avg))
            theta[...] = avg
            done_steps += k
            rnd += 1
        elapsed = time.perf_counter() - t0
        logs = {"train/loss": loss_sum / rows_seen, "lr": lr, "train/samples_per_s": rows_seen / elapsed,
                "dist/consensus_distance": float(np.mean(dist)), "dist/straggler_wait_s": wait,
                "dist/rounds": float(len(dist)), **pool.per_worker_logs()}
        if want_correct:
            logs["train/accuracy"] = correct / rows_seen
        if reporter.end_epoch(epoch, theta, logs, trainer_states=lambda: trainer_states(pool)):
            break
    return theta, pool.final_opt_state(), epoch
