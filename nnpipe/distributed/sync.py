"""``sync``: one optimizer step per global mini-batch, gradients computed on the workers.

The global batch order is single-process :func:`nnpipe.core.training.fit`'s: epoch
``e`` uses the ``e``-th ``default_rng(seed).permutation(n)``, cut into batches
of ``batch_size``. Each trainer rebuilds that permutation itself (it is a few
integers of work, not data) and takes the rows of each batch that fall in its
shard. The driver averages the shards' mean gradients weighted by their rows
in the batch, which is the batch's mean gradient, and takes the step; so with
a fixed seed the parameters equal single-process training's up to rounding.

Per step the driver sends the parameters to each trainer and gets a gradient
back: ``2 * param bytes`` per worker. If a worker dies, its trainer is rebuilt
and the same step is retried with the same parameters, so the result is
unchanged. The same rule runs the synchronous warm-up epochs of ``local-sgd``
and ``async``, with a global batch of ``batch_size`` rows per worker.
"""

from __future__ import annotations

import numpy as np

from nnpipe.config import TrainConfig
from nnpipe.core.training import clip_by_global_norm
from nnpipe.distributed.protocol import Pool
from nnpipe.distributed.rounds import EpochTally, MergeRule, check_update, gather_round
from nnpipe.results import check_finite


class AverageGradients(MergeRule):
    """Average the shards' gradients of each global batch; the driver takes the step.

    Parameters
    ----------
    batch : int, optional
        Global batch size; default ``config.batch_size``.
    """

    def __init__(self, pool: Pool, config: TrainConfig, theta: np.ndarray, batch: int | None = None):
        super().__init__(pool, config, theta)
        self.opt = config.make_optimizer()
        self.state = self.opt.init(theta)
        self.grad = np.empty_like(theta)
        self.batch = min(batch or config.batch_size, pool.n_total)

    def run_epoch(self, epoch: int, lr: float, theta: np.ndarray, tally: EpochTally) -> dict[str, float]:
        pool, batch = self.pool, self.batch
        wait = 0.0
        for step in range(-(-pool.n_total // batch)):
            where = f"in epoch {epoch}, step {step}"
            grads, rows, w, *_ = gather_round(pool, "sync_grad", lambda t: (theta, epoch, step, batch), where,
                                              tally, inline=True)
            wait += w
            self.grad.fill(0.0)
            n_rows = sum(rows)
            for t, g, r in zip(pool.trainers, grads, rows):
                if r:
                    check_update(g, t, "gradient", where)
                    self.grad += (r / n_rows) * g  # the shard's share of the batch mean
            clip_by_global_norm(self.grad, self.config.clip_norm)
            self.opt.step(theta, self.grad, self.state, lr, inplace=True)
            check_finite(theta, f"after the update {where}")
        return {"dist/straggler_wait_s": wait}

    def driver_state(self) -> dict[str, np.ndarray]:
        return self.state

    def load(self, opt_state: dict[str, np.ndarray]) -> None:
        self.state = {k: np.asarray(v) for k, v in opt_state.items()}
