"""An in-process trainer pool: the loops' merge logic, deterministic and without a cluster.

:class:`InProcessPool` has :class:`nnpipe.distributed.pool.TrainerPool`'s
interface (it subclasses it for the accounting) but keeps real
:class:`ShardTrainer` objects in this process. Calls run at once, through a
pickle round trip as on the wire; their completion order comes from a
simulated clock: trainer ``i``'s calls take ``durations[i]`` simulated
seconds (default 1), and :meth:`wait` hands back the pending call that
finishes first (ties in call order); ``jitter`` multiplies each call's
duration by a seeded log-normal factor, for the random staleness a busy
cluster shows. So a straggler is a number, not a sleep, and every run is
repeatable.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import pickle
from typing import Any

import numpy as np

from nnpipe.config import TrainConfig
from nnpipe.core.network import NetworkSpec
from nnpipe.core.problem import Problem
from nnpipe.distributed import run_mode
from nnpipe.distributed.pool import TrainerPool, _payload_bytes
from nnpipe.distributed.reporter import Reporter
from nnpipe.distributed.shards import Shard, row_bounds
from nnpipe.distributed.trainer import ShardTrainer, build_shard
from nnpipe.results import FitResult


class Held:
    """Stands in for a Dask future holding ``value``."""

    def __init__(self, value: Any, key: str = "held"):
        self.value, self.key = value, key

    def result(self, timeout: float | None = None) -> Any:
        return self.value

    def done(self) -> bool:
        return True

    def release(self) -> None:
        pass


class InProcessPool(TrainerPool):
    """Trainers on ``n_shards`` shards of ``(X, Y)`` in this process, on a simulated clock.

    ``log`` records every call as ``(trainer id, method, result)`` in call order.
    """

    def __init__(self, X: np.ndarray, Y: np.ndarray, spec: NetworkSpec, config: TrainConfig, n_shards: int,
                 durations: dict[int, float] | None = None, jitter: float = 0.0):
        bounds = row_bounds(len(X), n_shards)
        shards = [Shard(i, int(lo), int(hi), Held(build_shard(X[lo:hi], Y[lo:hi], lo)))
                  for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]))]
        super().__init__(None, shards, spec, config, len(X))
        self.durations = dict(durations or {})
        self.jitter, self._rng = jitter, np.random.default_rng(12345)
        self.clock = 0.0
        self.finish: dict[cf.Future, tuple[float, int]] = {}
        self.log: list[tuple[int, str, Any]] = []
        self._seq = itertools.count()
        self.workers = [f"inproc://{i}" for i in range(n_shards)]
        self.start(self.workers)

    def live_workers(self) -> list[str]:
        return [a for a in self.workers if a not in self.lost]

    def _submit(self, shard: Shard, address: str) -> tuple[int, str, Held]:
        tid = self._next_id
        self._next_id += 1
        trainer = ShardTrainer(self.spec_dict, shard.future.value, self.config, tid, self.n_total)
        return tid, address, Held(trainer, f"trainer-{tid}")

    def call(self, trainer: Any, method: str, *args: Any, inline: bool = False) -> cf.Future:
        self.bytes_sent += _payload_bytes(args)
        args = pickle.loads(pickle.dumps(args))
        result = pickle.loads(pickle.dumps(getattr(trainer.future.value, method)(*args)))
        self.log.append((trainer.id, method, result))
        fut: cf.Future = cf.Future()
        fut.set_result(result)
        took = self.durations.get(trainer.id, 1.0)
        if self.jitter:
            took *= float(np.exp(self.jitter * self._rng.standard_normal()))
        self.finish[fut] = (self.clock + took, next(self._seq))
        return fut

    def wait(self, futures: Any, timeout: float | None = None) -> set[cf.Future]:
        pending = [f for f in futures if f in self.finish]
        if not pending:
            return set(futures)
        first = min(pending, key=lambda f: self.finish[f])
        self.clock = max(self.clock, self.finish.pop(first)[0])
        return {first}

    def wait_all(self, futures: Any, timeout: float | None = None) -> set[cf.Future]:
        for f in futures:
            self.finish.pop(f, None)
        return set(futures)


def fit_in_process(problem: Problem, config: TrainConfig, *, n_shards: int | None = None,
                   durations: dict[int, float] | None = None, jitter: float = 0.0,
                   callbacks: list | tuple = ()) -> tuple[FitResult, InProcessPool]:
    """``fit_distributed(problem, config)`` on an :class:`InProcessPool`: the same loop and merge rules, no cluster."""
    spec = problem.spec
    pool = InProcessPool(problem.X, problem.Y, spec, config, n_shards or config.workers, durations, jitter)
    reporter = Reporter(spec, config, problem.validation, callbacks, config.mode)
    theta = np.array(problem.theta, dtype=spec.dtype, copy=True)
    theta, state, last_epoch = run_mode(pool, theta, config, reporter)
    info = {"mode": config.mode, "events": pool.events, **pool.rule_info}
    return reporter.result(theta, state, last_epoch, info), pool
