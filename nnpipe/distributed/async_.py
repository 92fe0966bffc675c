"""``async``: no barrier; each result is merged as it arrives and its trainer sent straight back.

A trainer runs K local steps from the newest global parameters it was sent
and returns its parameter *delta*. The driver merges ``theta += mixing * w *
delta`` where ``w`` depends on the result's staleness, the number of merges
since that trainer's start parameters were sent:

- ``staleness <= max_staleness``: ``w = 1``;
- beyond it, ``staleness_policy="downweight"``: ``w = 1 / (1 + staleness - max_staleness)``;
  ``"drop"``: the result is discarded (the rows still count as seen).

A slow trainer never holds the others: whoever finishes is merged and
re-dispatched at once. A worker that joins mid-run gets a trainer on the shard
with the fewest trainers (the shard's data moves worker to worker, never via
the driver) with its own random stream; a lost worker's shard is rebuilt on a
live worker. Traffic per round: the parameters out, the delta back.
"""

from __future__ import annotations

import concurrent.futures as cf
import time

import numpy as np

from nnpipe.config import TrainConfig
from nnpipe.distributed.local_sgd import resume_trainers, trainer_states
from nnpipe.distributed.loop import Reporter
from nnpipe.distributed.pool import Trainer, TrainerPool, WorkerLost
from nnpipe.results import DivergenceError, check_finite

JOIN_CHECK_S = 1.0  # how often the scheduler is asked about new workers


def staleness_weight(staleness: int, max_staleness: int, policy: str) -> float:
    """Merge weight for a result ``staleness`` merges old (0.0 means drop it)."""
    if staleness <= max_staleness:
        return 1.0
    if policy == "drop":
        return 0.0
    if policy == "downweight":
        return 1.0 / (1 + staleness - max_staleness)
    raise ValueError(f"staleness_policy must be 'downweight' or 'drop', got {policy!r}")


def run_async(pool: TrainerPool, theta: np.ndarray, config: TrainConfig, reporter: Reporter) -> tuple:
    """The asynchronous loop; returns ``(theta, opt_state, last_epoch)`` (opt state: trainer 0's)."""
    schedule = config.make_schedule()
    theta = resume_trainers(pool, theta, reporter)
    K, n = config.sync_every, pool.n_total
    want_correct = reporter.net.head.task != "regression"
    inflight: dict[cf.Future, tuple[Trainer, int, float]] = {}
    version = 0  # merges so far
    merges_by_trainer: dict[int, int] = {}
    info_merges: list[dict] = []

    epoch = reporter.start_epoch
    if epoch >= config.epochs:
        return theta, {}, epoch - 1
    lr = schedule(epoch)

    def dispatch(t: Trainer) -> None:
        # A copy: ``theta`` keeps changing while this one is being serialised.
        inflight[pool.call(t, "local_round", theta.copy(), K, lr, True)] = (t, version, time.perf_counter())

    for t in list(pool.trainers):
        dispatch(t)
    t0 = time.perf_counter()
    last_join_check = time.monotonic()
    loss_sum, rows, correct, stale, dropped = 0.0, 0, 0, [], 0
    stop = False
    while not stop:
        done, _ = cf.wait(inflight, timeout=JOIN_CHECK_S, return_when=cf.FIRST_COMPLETED)
        if time.monotonic() - last_join_check >= JOIN_CHECK_S:
            last_join_check = time.monotonic()
            for address in pool.joined_workers():
                served = {s.index: 0 for s in pool.shards}
                for tr in pool.trainers:
                    served[tr.shard.index] += 1
                shard = pool.shards[min(served, key=lambda i: (served[i], i))]
                try:
                    dispatch(pool.add_trainer(shard, address, "worker_joined", merges_so_far=version))
                except Exception as exc:  # a worker that leaves as it joins must not end the run
                    pool.lost.add(address)
                    pool.events.append({"event": "join_failed", "worker": address, "error": repr(exc),
                                        "time": time.time()})
        for fut in done:
            t, v0, sent_at = inflight.pop(fut)
            try:
                delta, l_sum, r, c, secs = pool.received(fut.result())
            except WorkerLost as exc:
                dispatch(pool.replace(t, exc, f"during merge {version} (epoch {epoch})"))
                continue
            pool.record_round(time.perf_counter() - sent_at, secs)
            t.busy_s += secs
            t.rows += r
            loss_sum += l_sum
            rows += r
            correct += c
            staleness = version - v0
            w = staleness_weight(staleness, config.max_staleness, config.staleness_policy)
            if w == 0.0:
                dropped += 1
            else:
                if not np.isfinite(delta).all():
                    raise DivergenceError(f"training diverged: worker {t.address} (trainer {t.id}, shard "
                                          f"{t.shard.index}) sent a non-finite update at merge {version} "
                                          f"(epoch {epoch})")
                theta += (config.mixing * w) * delta
                check_finite(theta, f"after merging worker {t.address} (trainer {t.id}) at merge {version} "
                                    f"(epoch {epoch})")
                version += 1
                stale.append(staleness)
                merges_by_trainer[t.id] = merges_by_trainer.get(t.id, 0) + 1
                info_merges.append({"merge": version, "trainer": t.id, "staleness": staleness, "weight": w,
                                    "time": time.perf_counter()})
            if rows >= n:  # an epoch's worth of rows: report
                elapsed = time.perf_counter() - t0
                logs = {"train/loss": loss_sum / rows, "lr": lr, "train/samples_per_s": rows / elapsed,
                        "dist/staleness": float(np.mean(stale)) if stale else 0.0,
                        "dist/staleness_max": float(max(stale)) if stale else 0.0,
                        "dist/merges": float(len(stale)), "dist/dropped": float(dropped), **pool.per_worker_logs()}
                if want_correct:
                    logs["train/accuracy"] = correct / rows
                stop = reporter.end_epoch(epoch, theta, logs, trainer_states=lambda: trainer_states(pool))
                if epoch + 1 >= config.epochs:
                    stop = True
                if stop:
                    break
                epoch += 1
                lr = schedule(epoch)
                t0 = time.perf_counter()
                loss_sum, rows, correct, stale, dropped = 0.0, 0, 0, [], 0
            dispatch(t)
    # Let the rounds still running finish before their actors are released.
    done, _ = cf.wait(inflight, timeout=60)
    for fut in done:  # finished rounds that arrived too late to merge still count as traffic
        t, _, sent_at = inflight[fut]
        if fut.exception() is None:
            pool.record_round(time.perf_counter() - sent_at, pool.received(fut.result())[-1])
    pool.async_info = {"merges_by_trainer": merges_by_trainer, "merges": info_merges}
    return theta, pool.final_opt_state(), epoch
