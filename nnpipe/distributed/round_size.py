"""Choosing the work per round so that coordination costs at most ~10% of a round.

A round costs one round trip ``rtt`` (parameters out and back) plus the
compute of its rows. With ``t_row`` seconds of compute per row, coordination
is at most ``share`` of the round when the round computes at least
``rtt * (1 - share) / share / t_row`` rows per worker. Only used when the
user left ``batch_size`` and ``sync_every`` at their defaults
(``TrainConfig.auto_round``); an explicit value always wins. The first
rounds of the run then measure what a round really costs and choose
``sync_every`` once more (:class:`RoundRetuner`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from nnpipe.config import TrainConfig

LOCAL_BATCH = 256  # rows per local step when chosen for the user (a step of 32 rows is mostly overhead)
MIN_ROUNDS_PER_EPOCH = 8  # averaging less often than this costs accuracy more than coordination costs time


def choose_round(config: TrainConfig, rtt_s: float, row_s: float, n_train: int, workers: int,
                 share: float = 0.10) -> tuple[TrainConfig, dict[str, float]]:
    """The config with the chosen ``batch_size`` (sync) or ``batch_size`` and ``sync_every``.

    Parameters
    ----------
    rtt_s : float
        Measured round trip of a parameter-sized message to a worker.
    row_s : float
        Measured compute seconds per row of one step on a worker.
    n_train, workers : int
        Caps: a sync batch is at most an eighth of the rows, and local rounds
        leave at least ``MIN_ROUNDS_PER_EPOCH`` averagings per pass.

    Returns
    -------
    (TrainConfig, dict)
        The new config and the facts to log (``round/*``).
    """
    rows_needed = rtt_s * (1 - share) / share / max(row_s, 1e-9)
    shard = max(n_train // max(workers, 1), 1)
    facts = {"round/rtt_s": rtt_s, "round/row_s": row_s, "round/rows_per_worker": 0.0}
    if config.mode == "sync":
        batch = int(min(max(config.batch_size, math.ceil(rows_needed) * workers), max(n_train // 8, config.batch_size)))
        new = dataclasses.replace(config, batch_size=batch)
        rows = batch / workers
    else:
        batch = LOCAL_BATCH if config.batch_size < LOCAL_BATCH else config.batch_size
        k = int(min(max(1, math.ceil(rows_needed / batch)), max(1, shard // batch // MIN_ROUNDS_PER_EPOCH)))
        new = dataclasses.replace(config, batch_size=batch, sync_every=k)
        rows = batch * k
    facts["round/rows_per_worker"] = float(rows)
    facts["round/expected_coordination_share"] = rtt_s / (rtt_s + rows * row_s)
    return new, facts


RETUNE_SKIP = 1  # the run's first round pays one-time costs (first touch of the shard, buffers) and is not timed
RETUNE_ROUNDS = 4  # rounds timed before K is chosen again (median: one slow round does not decide)


class RoundRetuner:
    """Chooses ``sync_every`` once more, from the run's own first rounds.

    The probe before training (:func:`choose_round`'s ``rtt_s`` and
    ``row_s``) times an idle round trip and steps on random rows. A real
    round costs more: each trainer also waits for the driver to receive the
    other results, merge and send the next round, and the trainers share the
    cores with the driver. On the 1M-row bench the probe measured 1.2-1.7 ms
    and a round cost a trainer 3-5 ms of waiting, so coordination took about
    20% of a round instead of the 10% aimed at. After :data:`RETUNE_SKIP`
    rounds, the median of the next :data:`RETUNE_ROUNDS` rounds' idle time per
    trainer (wall time minus its compute) and the fastest of their compute
    per row replace the probe's figures, once. Used only where the probe
    chose the round size for the user, and only for ``local-sgd`` and
    ``async`` (a ``sync`` batch is the global batch: changing it mid-run
    would change the math).

    Parameters
    ----------
    config : TrainConfig
        The config the run started with (its ``sync_every`` from the probe).
    n_train, workers : int
        As :func:`choose_round` (its caps apply again).
    """

    def __init__(self, config: TrainConfig, n_train: int, workers: int, share: float = 0.10):
        self.config, self.n_train, self.workers, self.share = config, n_train, workers, share
        self.seen = 0
        self.idle_s: list[float] = []
        self.row_s: list[float] = []
        self.facts: dict[str, float] = {}

    def observe(self, wall_s: float, compute_s: float, rows: float) -> int | None:
        """Count one round; returns the new ``sync_every`` when the rounds timed are enough, else None.

        Parameters
        ----------
        wall_s : float
            From sending the round to a trainer to having its result (``local-sgd``: all results).
        compute_s : float
            The trainer's compute inside the round (``local-sgd``: the trainers' mean).
        rows : float
            Rows the trainer stepped on in the round (``local-sgd``: per trainer).
        """
        if self.facts or rows <= 0:  # chosen already (once only), or an empty round
            return None
        self.seen += 1
        if self.seen <= RETUNE_SKIP:
            return None
        self.idle_s.append(max(wall_s - compute_s, 0.0))
        self.row_s.append(compute_s / rows)
        if len(self.idle_s) < RETUNE_ROUNDS:
            return None
        # Idle time is the round's fixed cost: its median. Compute per row only grows when something
        # else takes the cores for a moment; the fastest round is the trainers' own speed.
        idle, row_s = float(np.median(self.idle_s)), float(min(self.row_s))
        new, facts = choose_round(self.config, idle, row_s, self.n_train, self.workers, self.share)
        self.facts = {"round/measured_idle_s": idle, "round/measured_row_s": row_s,
                      "round/sync_every_probe": float(self.config.sync_every),
                      "round/sync_every": float(new.sync_every),
                      "round/retuned_after": float(self.seen),
                      "round/expected_coordination_share": facts["round/expected_coordination_share"]}
        return new.sync_every
