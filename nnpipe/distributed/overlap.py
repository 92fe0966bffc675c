"""``local-sgd`` with overlapped rounds: a trainer computes while its result travels and merges.

In plain ``local-sgd`` (:mod:`.local_sgd`) every round ends with a barrier:
each trainer sits idle while its parameters travel to the driver, while the
driver waits for the slowest trainer, merges, and sends the next round back.
With ``overlap=d`` (``d`` = 1 or 2) round ``j`` goes out as soon as the
driver holds the merges of rounds ``< j - d``; it carries the global
parameters after exactly those merges (never newer ones, so that the result
does not depend on arrival order and a seeded run is reproducible) and the
trainer starts from them plus its own deltas of rounds ``j - d .. j - 1``,
which are not merged into them (:meth:`.trainer.ShardTrainer.overlap_round`). So

- ``overlap=1``: a trainer gets its next round the moment its result arrives,
  without waiting for the other trainers or the merge: one-step-delayed
  averaging (Wang et al. 2020, Overlap Local-SGD; the idea behind Streaming
  DiLoCo's overlapped syncs, Douillard et al. 2025);
- ``overlap=2``: the next round is also queued on the trainer's worker while
  the current one runs, so the parameters' trip both ways hides behind compute.

Each merge is the row-weighted average of the round's deltas, added to the
global parameters through the outer optimizer (:mod:`.outer`), as in
``local-sgd``; a trainer is never more than ``d`` rounds ahead of the merges.
Every epoch ends with every round merged (the validation, the checkpoint and
the next epoch see all of the epoch's rows), so an epoch boundary is one
barrier. A trainer whose worker is lost is rebuilt, and the lost round is
redone from the same parameters (without the lost trainer's unmerged deltas).

Trainer results carry the seconds the trainer sat idle before each round:
``dist/idle_s`` is their mean over trainers per epoch, and the round-size
retuner (:class:`.round_size.RoundRetuner`) sees that idle time, not the
time a round waited in the worker's queue.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from nnpipe.config import TrainConfig
from nnpipe.distributed.local_sgd import AverageParameters, consensus_distance, weighted_average
from nnpipe.distributed.protocol import Pool
from nnpipe.distributed.rounds import EpochTally, check_update
from nnpipe.distributed.rpc import WorkerLost


class OverlapAverage(AverageParameters):
    """``local-sgd`` whose trainers run up to ``config.overlap`` rounds ahead of the merge."""

    def __init__(self, pool: Pool, config: TrainConfig, theta: np.ndarray):
        super().__init__(pool, config, theta)
        self.depth = int(config.overlap)
        # Overlap hides the waiting the retuner measures (0.2 ms a round), not what a round costs the
        # cores (the driver's serialising and merging, each call's overhead on the worker): retuned
        # on idle time alone, a 200k-row run went from sync_every 34 to 1, a round per step.
        self.min_k = config.sync_every
        self.target = np.empty_like(theta)

    def run_epoch(self, epoch: int, lr: float, theta: np.ndarray, tally: EpochTally) -> dict[str, float]:
        pool = self.pool
        pool.rebalance(f"before epoch {epoch}")
        steps_per_epoch = -(-max(s.rows for s in pool.shards) // self.config.batch_size)
        n_shards = len(pool.shards)
        steps_of: dict[int, int] = {}  # round -> local steps, fixed when the round first goes out
        results: dict[int, dict[int, tuple]] = {}  # round -> shard index -> (delta, compute s, idle s)
        inflight: dict[Any, tuple[Any, int]] = {}
        next_round = {t.shard.index: self.round for t in pool.trainers}
        active = list(pool.trainers)  # trainers whose share of the epoch is not all sent yet
        first = merged = self.round  # rounds before ``merged`` are in theta
        # theta after each of the last merges: round j starts from the one after merge j - depth,
        # whatever the arrival order, so that a seeded run is reproducible (as plain local-sgd).
        snapshots = {merged: theta.copy()}
        idle, dist, norms = [], [], []

        def steps(j: int) -> int:
            if j not in steps_of:  # rounds go out in order on every shard: all earlier ones are planned
                steps_of[j] = max(0, min(self.k, steps_per_epoch - sum(steps_of.values())))
            return steps_of[j]

        sent: set[tuple[int, int]] = set()  # (trainer id, round)

        def send(t: Any, j: int) -> None:
            base = max(j - self.depth, first)
            # Round j - 1's delta is part of this round's start when this trainer ran it: it must run first.
            after = j - 1 if base < j and (t.id, j - 1) in sent else None
            fut = pool.call(t, "overlap_round", snapshots[base], base, j, steps(j), lr, after)
            sent.add((t.id, j))
            inflight[fut] = (t, j)
            next_round[t.shard.index] = max(next_round[t.shard.index], j + 1)

        while True:
            while len(results.get(merged, ())) == n_shards:
                dist_j, norm_j = self._merge(theta, results.pop(merged), merged, epoch, steps_of[merged])
                dist.append(dist_j)
                norms.append(norm_j)
                merged += 1
                snapshots[merged] = theta.copy()
                snapshots.pop(merged - self.depth - 1, None)
            for t in list(active):
                while True:
                    j = next_round[t.shard.index]
                    if steps(j) == 0:  # this trainer's share of the epoch is out
                        active.remove(t)
                        break
                    if merged < j - self.depth or sum(tt is t for tt, _ in inflight.values()) >= self.depth:
                        break
                    send(t, j)
            if not inflight:
                break
            for fut in pool.wait(inflight):
                t, j = inflight.pop(fut)
                where = f"in round {j} (epoch {epoch})"
                try:
                    (delta, idle_s), loss_sum, rows, correct, secs = pool.received(fut.result())
                except WorkerLost as exc:
                    # Its other queued round fails the same way and lands here too (replace() then
                    # returns the same new trainer). Redone from the same parameters: the new
                    # trainer has no unmerged deltas.
                    new = pool.replace(t, exc, where)
                    active = [new if a is t else a for a in active]
                    send(new, j)
                    continue
                if delta is None:  # it arrived before the round it follows: that one is queued, send again
                    send(t, j)
                    continue
                check_update(delta, t, "parameters", where)
                tally.add(t, loss_sum, rows, correct, secs)
                self.observe_round(secs + idle_s, secs, rows)
                idle.append(idle_s)
                results.setdefault(j, {})[t.shard.index] = (delta, secs, idle_s)
        self.round = merged
        return {"dist/consensus_distance": float(np.mean(dist)) if dist else 0.0,
                "dist/consensus_distance_last": dist[-1] if dist else 0.0,
                "dist/outer_step_norm": float(np.mean(norms)) if norms else 0.0,
                "dist/idle_s": float(np.sum(idle)) / max(n_shards, 1), "dist/rounds": float(len(dist))}

    def _merge(self, theta: np.ndarray, results: dict[int, tuple], j: int, epoch: int,
               steps: int) -> tuple[float, float]:
        """Move ``theta`` by the row-weighted mean of round ``j``'s deltas (through the outer optimizer)."""
        t0 = time.perf_counter()
        shards = self.pool.shards
        ds = [results[s.index][0] for s in shards]
        # A round's coordination: what its trainers waited beyond their compute (one count per round, as local-sgd).
        self.pool.record_round(max(c + i for _, c, i in results.values()), max(c for _, c, _ in results.values()))
        weighted_average(ds, [s.rows for s in shards], out=self.avg)
        # The deltas started from (almost) the same parameters: their spread is the trainers' spread.
        dist = consensus_distance(ds, self.avg)
        np.add(theta, self.avg, out=self.target)
        norm = self.outer.apply(theta, self.target)
        self.rounds_log.append({"round": j, "epoch": epoch, "steps": steps, "consensus_distance": dist,
                                "outer_step_norm": norm, "merge_s": time.perf_counter() - t0})
        return dist, norm
