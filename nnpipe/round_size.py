"""Choosing the work per round so that coordination costs at most ~10% of a round.

A round costs one round trip ``rtt`` (parameters out and back) plus the
compute of its rows. With ``t_row`` seconds of compute per row, coordination
is at most ``share`` of the round when the round computes at least
``rtt * (1 - share) / share / t_row`` rows per worker. Only used when the
user left ``batch_size`` and ``sync_every`` at their defaults
(``TrainConfig.auto_round``); an explicit value always wins.
"""

from __future__ import annotations

import dataclasses
import math

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
