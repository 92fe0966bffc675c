"""``async``: no barrier; each result is merged as it arrives and its trainer sent straight back.

A trainer runs K local steps (at most one pass over its shard) from the
newest global parameters it was sent and returns its parameter *delta*. A result's staleness is the number of
merges since that trainer's start parameters were sent. The merge target is
``theta + mixing * w * delta``, with ``w`` from ``staleness_policy``:

- ``inverse``: ``w = 1 / (1 + staleness)`` for every merge (staleness-aware
  async SGD, Zhang et al. 2016): with N trainers racing, each delta is about
  N merges old, so the merges add up to about one average of N deltas
  instead of N full steps;
- ``downweight``: ``w = 1`` up to ``max_staleness``, then ``1 / (1 + staleness - max_staleness)``;
- ``drop``: ``w = 1`` up to ``max_staleness``, beyond it the result is
  discarded (its rows still count as seen).

The outer optimizer (:mod:`.outer`) then steps the global parameters toward
the target, treating ``theta - target`` as the pseudo-gradient: its state
lives on the driver and advances once per merge, in arrival order, which is
the only order the driver knows; the version counter that measures staleness
advances with it, so a result that arrives after newer ones is weighted by
how many merges it missed, never applied as if fresh.

A slow trainer never holds the others: whoever finishes is merged and
re-dispatched at once. A worker that joins mid-run gets a trainer on the shard
with the fewest trainers (the shard's data moves worker to worker, never via
the driver) with its own random stream; a lost worker's shard is rebuilt on a
live worker. Traffic per round: the parameters out, the delta back.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from nnpipe.config import TrainConfig
from nnpipe.distributed.outer import OuterRule
from nnpipe.distributed.protocol import Pool
from nnpipe.distributed.rounds import EpochTally, check_update
from nnpipe.distributed.rpc import WorkerLost
from nnpipe.results import check_finite

JOIN_CHECK_S = 1.0  # how often the scheduler is asked about new workers


def staleness_weight(staleness: int, max_staleness: int, policy: str) -> float:
    """Merge weight for a result ``staleness`` merges old (0.0 means drop it)."""
    if policy == "inverse":
        return 1.0 / (1 + staleness)
    if staleness <= max_staleness and policy in ("downweight", "drop"):
        return 1.0
    if policy == "drop":
        return 0.0
    if policy == "downweight":
        return 1.0 / (1 + staleness - max_staleness)
    raise ValueError(f"staleness_policy must be 'inverse', 'downweight' or 'drop', got {policy!r}")


class MergeOnArrival(OuterRule):
    """Merge each trainer's delta as it arrives, weighted by its staleness; re-dispatch at once."""

    def __init__(self, pool: Pool, config: TrainConfig, theta: np.ndarray):
        super().__init__(pool, config, theta)
        self.target = np.empty_like(theta)
        self.inflight: dict[Any, tuple[Any, int, float]] = {}
        self.idle = list(pool.trainers)  # trainers waiting for their first (or next epoch's) dispatch
        self.version = 0  # merges so far
        self.merges_by_trainer: dict[int, int] = {}
        self.merges: list[dict] = []
        self.last_join_check = time.monotonic()

    def _dispatch(self, t: Any, theta: np.ndarray, lr: float) -> None:
        # At most one pass over the trainer's shard per round, as a local-sgd round ends with the
        # epoch: with many workers and small shards, K steps would walk the same rows several
        # times and drift (digits, 16 workers: 0.5 points better with the cap).
        steps = min(self.k, -(-t.shard.rows // self.config.batch_size))
        # A copy: ``theta`` keeps changing while this one is being serialised.
        fut = self.pool.call(t, "local_round", theta.copy(), steps, lr, True)
        self.inflight[fut] = (t, self.version, time.perf_counter())

    def _check_joins(self, theta: np.ndarray, lr: float) -> None:
        pool = self.pool
        for address in pool.joined_workers():
            served = {s.index: 0 for s in pool.shards}
            for tr in pool.trainers:
                served[tr.shard.index] += 1
            shard = pool.shards[min(served, key=lambda i: (served[i], i))]
            try:
                self._dispatch(pool.add_trainer(shard, address, "worker_joined", merges_so_far=self.version),
                               theta, lr)
            except Exception as exc:  # a worker that leaves as it joins must not end the run
                pool.lost.add(address)
                pool.events.append({"event": "join_failed", "worker": address, "error": repr(exc),
                                    "time": time.time()})

    def run_epoch(self, epoch: int, lr: float, theta: np.ndarray, tally: EpochTally) -> dict[str, float]:
        pool, config = self.pool, self.config
        for t in self.idle:
            self._dispatch(t, theta, lr)
        self.idle = []
        stale, weights, norms, dropped = [], [], [], 0
        while True:
            done = pool.wait(self.inflight, timeout=JOIN_CHECK_S)
            if time.monotonic() - self.last_join_check >= JOIN_CHECK_S:
                self.last_join_check = time.monotonic()
                self._check_joins(theta, lr)
            for fut in done:
                t, v0, sent_at = self.inflight.pop(fut)
                where = f"at merge {self.version} (epoch {epoch})"
                try:
                    delta, l_sum, r, c, secs = pool.received(fut.result())
                except WorkerLost as exc:
                    self._dispatch(pool.replace(t, exc, f"during merge {self.version} (epoch {epoch})"), theta, lr)
                    continue
                wall = time.perf_counter() - sent_at
                pool.record_round(wall, secs)
                self.observe_round(wall, secs, r)
                tally.add(t, l_sum, r, c, secs)
                staleness = self.version - v0
                w = staleness_weight(staleness, config.max_staleness, config.staleness_policy)
                if w == 0.0:
                    dropped += 1
                else:
                    check_update(delta, t, "an update", where)
                    np.multiply(delta, config.mixing * w, out=self.target)
                    self.target += theta
                    norm = self.outer.apply(theta, self.target)
                    norms.append(norm)
                    check_finite(theta, f"after merging worker {t.address} (trainer {t.id}) {where}")
                    self.version += 1
                    stale.append(staleness)
                    weights.append(w)
                    self.merges_by_trainer[t.id] = self.merges_by_trainer.get(t.id, 0) + 1
                    self.merges.append({"merge": self.version, "trainer": t.id, "staleness": staleness,
                                        "weight": w, "outer_step_norm": norm,
                                        "time": time.perf_counter()})
                if tally.rows >= pool.n_total:  # an epoch's worth of rows: report; t goes out next epoch
                    self.idle.append(t)
                    return {"dist/staleness": float(np.mean(stale)) if stale else 0.0,
                            "dist/staleness_max": float(max(stale)) if stale else 0.0,
                            "dist/merge_weight": float(np.mean(weights)) if weights else 0.0,
                            "dist/outer_step_norm": float(np.mean(norms)) if norms else 0.0,
                            "dist/merges": float(len(stale)), "dist/dropped": float(dropped)}
                self._dispatch(t, theta, lr)

    def finish(self) -> None:
        # Let the rounds still running finish before their actors are released.
        pool = self.pool
        if self.inflight:
            done = pool.wait_all(self.inflight, timeout=60)
            for fut in done:  # finished rounds that arrived too late to merge still count as traffic
                t, _, sent_at = self.inflight[fut]
                if fut.exception() is None:
                    pool.record_round(time.perf_counter() - sent_at, pool.received(fut.result())[-1])
        super().finish()
        pool.rule_info.update(merges_by_trainer=self.merges_by_trainer, merges=self.merges)
