"""The trainer pool's contract: what the training loop and the merge rules may ask of a pool.

:class:`~nnpipe.distributed.pool.TrainerPool` fulfils it on a Dask cluster;
the tests' in-process pool (``tests/distributed/fakes.py``) fulfils it in one
process with a simulated clock, so every merge rule runs unchanged on both.
A type checker holds both to this one definition, where it used to be prose.
"""

from __future__ import annotations

import concurrent.futures as cf
from typing import TYPE_CHECKING, Any, Iterable, Protocol

import numpy as np

if TYPE_CHECKING:  # for annotations only: importing the pool would import Dask here
    from nnpipe.distributed.pool import Trainer
    from nnpipe.distributed.shards import Shard


class Pool(Protocol):
    """The trainers of one run, called directly and rebuilt when their worker is lost.

    Attributes
    ----------
    shards : list of Shard
        The training data's shards, one trainer each at the start.
    trainers : list of Trainer
        The live trainers (a lost one is replaced in place).
    n_total : int
        Rows across all shards (row-weighted merges divide by it).
    events : list of dict
        What happened to workers and trainers (lost, replaced, joined, moved), for ``FitResult.info``.
    lost : set of str
        Addresses of workers lost during the run.
    rounds : int
        Rounds counted by :meth:`record_round`.
    overhead_s : list of float
        Per round: wall time beyond the slowest trainer's compute.
    bytes_sent, bytes_received, bytes_other : int
        Parameter traffic of rounds both ways, and other traffic (checkpoint state).
    rule_info : dict
        What the merge rule reports; it goes to ``FitResult.info``.
    """

    shards: list[Shard]
    trainers: list[Trainer]
    n_total: int
    events: list[dict[str, Any]]
    lost: set[str]
    rounds: int
    overhead_s: list[float]
    bytes_sent: int
    bytes_received: int
    bytes_other: int
    rule_info: dict[str, Any]

    def start(self, addresses: list[str]) -> None:
        """Create one trainer per shard on ``addresses`` and wait until each answers."""

    def add_trainer(self, shard: Shard, address: str, reason: str, **facts: Any) -> Trainer:
        """Start one more trainer on ``shard`` at ``address`` (a joined worker), recording ``reason``."""

    def close(self) -> None:
        """Release every trainer and stop watching the cluster."""

    def call(self, trainer: Trainer, method: str, *args: Any, inline: bool = False) -> cf.Future:
        """Call ``trainer.method(*args)`` on its worker; a concurrent future of the result."""

    def call_sync(self, trainer: Trainer, method: str, *args: Any, where: str = "") -> Any:
        """``trainer.method(*args)``'s result; a lost trainer is rebuilt and the call made on the new one."""

    def wait(self, futures: Iterable[cf.Future], timeout: float | None = None) -> set[cf.Future]:
        """The futures that are done, waiting for at least one (or ``timeout`` s)."""

    def wait_all(self, futures: Iterable[cf.Future], timeout: float | None = None) -> set[cf.Future]:
        """The futures done after waiting for all of them (at most ``timeout`` s)."""

    def record_round(self, wall_s: float, compute_s: float) -> None:
        """Count a round and the coordination time it cost beyond its slowest compute."""

    def received(self, result: Any, per_round: bool = True) -> Any:
        """Account for a result's bytes (round traffic, or other) and return it."""

    def live_workers(self) -> list[str]:
        """Addresses of the workers that are up now."""

    def replace(self, trainer: Trainer, exc: BaseException, where: str, timeout: float = ...) -> Trainer:
        """Replace ``trainer`` after its worker was lost (``exc`` at ``where``); returns the new trainer."""

    def rebalance(self, where: str) -> None:
        """Move a trainer from a worker running two onto a worker that joined."""

    def final_opt_state(self) -> dict[str, np.ndarray]:
        """The first reachable trainer's optimizer state (for ``FitResult.opt_state``); not round traffic."""

    def joined_workers(self) -> list[str]:
        """Live workers that joined the cluster after this run started; each is reported once."""

    def per_worker_logs(self) -> dict[str, float]:
        """``worker/<trainer id>/samples_per_s`` over the busy time since the last call, then reset."""
