"""``local-sgd`` (parameter averaging): K local steps per trainer, then a row-weighted mean.

Each trainer keeps its own optimizer state and random stream between rounds
and walks its shard in batches of ``batch_size``. A round sends the global
parameters to every trainer (``param bytes`` each) and gets its parameters
back (``param bytes`` each); the round's target is the average of the
trainers' parameters weighted by their shards' rows, and the outer optimizer
(:mod:`.outer`; Nesterov by default) moves the global parameters toward it. With
``sync_every=1``, plain SGD, full-shard batches and no outer optimizer this is
exactly a ``sync`` step.

An epoch is ``ceil(max shard rows / batch_size)`` local steps, i.e. every
shard passes once; its last round may take fewer than K steps.
"""

from __future__ import annotations

import time

import numpy as np

from nnpipe.config import TrainConfig
from nnpipe.distributed.outer import OuterRule
from nnpipe.distributed.protocol import Pool
from nnpipe.distributed.rounds import EpochTally, check_update, gather_round


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


class AverageParameters(OuterRule):
    """K local steps on every trainer, then the outer step toward their row-weighted average."""

    def __init__(self, pool: Pool, config: TrainConfig, theta: np.ndarray):
        super().__init__(pool, config, theta)
        self.avg = np.empty_like(theta)
        self.round = 0
        self.rounds_log: list[dict] = []  # per round: FitResult.info["rounds_log"]

    def run_epoch(self, epoch: int, lr: float, theta: np.ndarray, tally: EpochTally) -> dict[str, float]:
        pool = self.pool
        steps_per_epoch = -(-max(s.rows for s in pool.shards) // self.config.batch_size)
        wait, dist, norms = 0.0, [], []
        done_steps = 0
        while done_steps < steps_per_epoch:
            k = min(self.k, steps_per_epoch - done_steps)
            where = f"in round {self.round} (epoch {epoch})"
            thetas, _, w, wall, compute = gather_round(pool, "local_round", lambda t: (theta, k, lr), where, tally)
            wait += w
            t_merge = time.perf_counter()
            self.observe_round(wall, compute, k * self.config.batch_size)
            for t, theta_i in zip(pool.trainers, thetas):
                check_update(theta_i, t, "parameters", where)
            weighted_average(thetas, [t.shard.rows for t in pool.trainers], out=self.avg)
            dist.append(consensus_distance(thetas, self.avg))
            norms.append(self.outer.apply(theta, self.avg))
            self.rounds_log.append({"round": self.round, "epoch": epoch, "steps": k,
                                    "consensus_distance": dist[-1], "outer_step_norm": norms[-1],
                                    "wall_s": wall, "compute_s": compute, "straggler_s": w,
                                    "merge_s": time.perf_counter() - t_merge})
            done_steps += k
            self.round += 1
        return {"dist/consensus_distance": float(np.mean(dist)), "dist/consensus_distance_last": dist[-1],
                "dist/outer_step_norm": float(np.mean(norms)), "dist/straggler_wait_s": wait,
                "dist/rounds": float(len(dist))}

    def finish(self) -> None:
        super().finish()
        self.pool.rule_info["rounds_log"] = self.rounds_log
