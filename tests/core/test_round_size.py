"""Choosing ``sync_every`` again from the run's first rounds (:class:`nnpipe.distributed.round_size.RoundRetuner`)."""

from __future__ import annotations

import math

from nnpipe.config import TrainConfig
from nnpipe.distributed.round_size import (
    RETUNE_ROUNDS,
    RETUNE_SKIP,
    RoundRetuner,
    choose_round,
)


def test_retuner_skips_the_first_round_and_chooses_once_from_the_median():
    cfg = TrainConfig(mode="local-sgd", auto_round=True, batch_size=256, sync_every=60)
    r = RoundRetuner(cfg, n_train=1_000_000, workers=2)
    # (wall, compute, rows): the first round is slow (one-time costs) and must not count.
    # Compute varies (another job took the cores for a moment): the fastest round is the trainers' speed.
    rounds = [(0.5, 0.010, 15360)] + [(0.0155 + 0.002 * i, 0.0125 + 0.001 * i, 15360)
                                      for i in range(RETUNE_ROUNDS)]
    answers = [r.observe(*x) for x in rounds]
    assert answers[:-1] == [None] * (RETUNE_SKIP + RETUNE_ROUNDS - 1)
    idle = sorted(w - c for w, c, _ in rounds[RETUNE_SKIP:])
    idle_median = (idle[1] + idle[2]) / 2
    row_s = 0.0125 / 15360
    assert math.isclose(r.facts["round/measured_idle_s"], idle_median)
    assert answers[-1] == math.ceil(idle_median * 9 / row_s / 256) == r.facts["round/sync_every"]
    assert answers[-1] == choose_round(cfg, idle_median, row_s, 1_000_000, 2)[0].sync_every
    assert r.facts["round/sync_every_probe"] == 60
    # Once only: later rounds, however slow, change nothing.
    assert r.observe(1.0, 0.001, 15360) is None and r.facts["round/sync_every"] == answers[-1]


def test_retuned_rounds_stay_within_the_data_caps():
    cfg = TrainConfig(mode="async", auto_round=True, batch_size=256, sync_every=5)
    r = RoundRetuner(cfg, n_train=40_000, workers=2)
    k = None
    for _ in range(RETUNE_SKIP + RETUNE_ROUNDS):
        k = r.observe(0.2, 0.001, 1280)  # a very slow round trip: wants huge rounds
    # At least MIN_ROUNDS_PER_EPOCH averagings per pass over a 20k-row shard.
    assert k == max(1, 20_000 // 256 // 8)
