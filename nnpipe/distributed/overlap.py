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
        self.pool.rebalance(f"before epoch {epoch}")
        ep = _Epoch(self, epoch, lr, theta)
        while True:
            ep.merge_complete_rounds()
            ep.send_ready_rounds()
            if not ep.inflight:
                break
            for fut in self.pool.wait(ep.inflight):
                ep.receive(fut, tally)
        self.round = ep.merged
        dist, norms, idle = ep.dist, ep.norms, ep.idle
        return {"dist/consensus_distance": float(np.mean(dist)) if dist else 0.0,
                "dist/consensus_distance_last": dist[-1] if dist else 0.0,
                "dist/outer_step_norm": float(np.mean(norms)) if norms else 0.0,
                "dist/idle_s": float(np.sum(idle)) / max(ep.n_shards, 1), "dist/rounds": float(len(dist))}

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


class _Epoch:
    """One epoch of :class:`OverlapAverage`: its rounds planned, in flight, received and merged."""

    def __init__(self, rule: OverlapAverage, epoch: int, lr: float, theta: np.ndarray):
        pool = self.pool = rule.pool
        self.rule, self.epoch, self.lr, self.theta, self.depth = rule, epoch, lr, theta, rule.depth
        self.steps_per_epoch = -(-max(s.rows for s in pool.shards) // rule.config.batch_size)
        self.n_shards = len(pool.shards)
        self.steps_of: dict[int, int] = {}  # round -> local steps, fixed when the round first goes out
        self.results: dict[int, dict[int, tuple]] = {}  # round -> shard index -> (delta, compute s, idle s)
        self.inflight: dict[Any, tuple[Any, int]] = {}
        self.next_round = {t.shard.index: rule.round for t in pool.trainers}
        self.active = list(pool.trainers)  # trainers whose share of the epoch is not all sent yet
        self.first = self.merged = rule.round  # rounds before ``merged`` are in theta
        # theta after each of the last merges: round j starts from the one after merge j - depth,
        # whatever the arrival order, so that a seeded run is reproducible (as plain local-sgd).
        self.snapshots = {self.merged: theta.copy()}
        self.sent: set[tuple[int, int]] = set()  # (trainer id, round)
        self.idle: list[float] = []
        self.dist: list[float] = []
        self.norms: list[float] = []

    def steps(self, j: int) -> int:
        """Round ``j``'s local steps (0 once the epoch's steps are all planned)."""
        if j not in self.steps_of:  # rounds go out in order on every shard: all earlier ones are planned
            self.steps_of[j] = max(0, min(self.rule.k, self.steps_per_epoch - sum(self.steps_of.values())))
        return self.steps_of[j]

    def send(self, t: Any, j: int) -> None:
        base = max(j - self.depth, self.first)
        # Round j - 1's delta is part of this round's start when this trainer ran it: it must run first.
        after = j - 1 if base < j and (t.id, j - 1) in self.sent else None
        fut = self.pool.call(t, "overlap_round", self.snapshots[base], base, j, self.steps(j), self.lr, after)
        self.sent.add((t.id, j))
        self.inflight[fut] = (t, j)
        self.next_round[t.shard.index] = max(self.next_round[t.shard.index], j + 1)

    def merge_complete_rounds(self) -> None:
        """Merge, in order, every round all trainers have returned."""
        while len(self.results.get(self.merged, ())) == self.n_shards:
            j = self.merged
            dist_j, norm_j = self.rule._merge(self.theta, self.results.pop(j), j, self.epoch, self.steps_of[j])
            self.dist.append(dist_j)
            self.norms.append(norm_j)
            self.merged += 1
            self.snapshots[self.merged] = self.theta.copy()
            self.snapshots.pop(self.merged - self.depth - 1, None)

    def send_ready_rounds(self) -> None:
        """Send each trainer its next rounds while it is within ``depth`` of the merges and of its queue."""
        for t in list(self.active):
            while True:
                j = self.next_round[t.shard.index]
                if self.steps(j) == 0:  # this trainer's share of the epoch is out
                    self.active.remove(t)
                    break
                if self.merged < j - self.depth or \
                        sum(tt is t for tt, _ in self.inflight.values()) >= self.depth:
                    break
                self.send(t, j)

    def receive(self, fut: Any, tally: EpochTally) -> None:
        """Take one finished call: keep its delta for the merge, or send its round again."""
        t, j = self.inflight.pop(fut)
        where = f"in round {j} (epoch {self.epoch})"
        try:
            (delta, idle_s), loss_sum, rows, correct, secs = self.pool.received(fut.result())
        except WorkerLost as exc:
            # Its other queued round fails the same way and lands here too (replace() then
            # returns the same new trainer). Redone from the same parameters: the new
            # trainer has no unmerged deltas.
            new = self.pool.replace(t, exc, where)
            self.active = [new if a is t else a for a in self.active]
            self.send(new, j)
            return
        if delta is None:  # it arrived before the round it follows: that one is queued, send again
            self.send(t, j)
            return
        check_update(delta, t, "parameters", where)
        tally.add(t, loss_sum, rows, correct, secs)
        self.rule.observe_round(secs + idle_s, secs, rows)
        self.idle.append(idle_s)
        self.results.setdefault(j, {})[t.shard.index] = (delta, secs, idle_s)
