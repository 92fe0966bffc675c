"""The trainers on the workers, called directly, and rebuilt when a worker dies.

A :class:`ShardTrainer` actor sits next to each shard. Calls go straight from
the driver to the actor's worker (:func:`.rpc.call_actor`), not through the
scheduler.

The loops see only this interface: ``trainers``, ``shards``, ``n_total``,
``call``, ``wait``, ``received``, ``record_round``, ``replace``,
``rebalance``, ``joined_workers``, ``add_trainer``, ``per_worker_logs``,
``final_opt_state``, ``events``, ``lost``. The tests drive the loops with an in-process pool of the
same shape (``tests/distributed/fakes.py``).

Actors die with their worker, so the pool watches for it (:mod:`.watch`: the
scheduler's ``remove-worker`` events fail pending calls at once; a comm error
is the fallback): the loss marks the worker lost, releases the actor, and
starts a new one on a live worker from the same shard future, which Dask
recomputes from its task if its data died too. Every call that touches a
trainer (rounds, checkpoints, the final state) goes through that path. A
worker that joins later takes a trainer off a survivor running two
(:meth:`TrainerPool.rebalance`). With
no live worker left after :data:`LOST_WAIT_S`, or no scheduler, the run stops
with a message that says what was lost and how to resume. Every such fact is
appended to ``events``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from distributed import Client, Future

from nnpipe.config import TrainConfig
from nnpipe.core.network import NetworkSpec
from nnpipe.distributed.cluster import worker_addresses
from nnpipe.distributed.rpc import WorkerLost, call_actor
from nnpipe.distributed.shards import Shard
from nnpipe.distributed.trainer import ShardTrainer
from nnpipe.distributed.watch import RESUME_HINT, LossWatch, SchedulerLost
from nnpipe.distributed.wire import WireCounter

log = logging.getLogger("nnpipe.distributed")

__all__ = ["Trainer", "TrainerPool", "WorkerLost", "SchedulerLost"]

LOST_WAIT_S = 20.0  # how long a run with no live worker waits for one before it stops
START_TIMEOUT_S = 120.0  # a last resort: a lost worker is noticed within a second, never by this
BALANCE_CHECK_S = 1.0  # how often a pool with a doubled-up worker asks the scheduler for idle ones


@dataclass
class Trainer:
    """One actor on one worker, training on one shard."""

    id: int
    shard: Shard
    address: str
    future: Future
    rounds: int = 0
    rows: int = 0
    busy_s: float = 0.0


def _payload_bytes(obj: Any) -> int:
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, (tuple, list)):
        return sum(_payload_bytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(_payload_bytes(o) for o in obj.values())
    return 0


class TrainerPool:
    """Creates, calls and rebuilds the trainers of one training run.

    Parameters
    ----------
    client : distributed.Client
    shards : list of Shard
    spec : NetworkSpec
    config : TrainConfig
    n_total : int
        Rows across all shards.
    delays : dict of int to float, optional
        Trainer id -> seconds each of its local rounds sleeps first: a
        straggler on purpose (tests, demos) without touching the math.
    """

    def __init__(self, client: Client, shards: list[Shard], spec: NetworkSpec, config: TrainConfig, n_total: int,
                 delays: dict[int, float] | None = None):
        self.client = client
        self.shards = shards
        self.spec_dict = spec.to_dict()
        self.config = config
        self.n_total = n_total
        self.delays = dict(delays or {})
        self.trainers: list[Trainer] = []
        self.events: list[dict[str, Any]] = []
        self.lost: set[str] = set()
        self.bytes_sent = 0
        self.bytes_received = 0
        self.bytes_other = 0
        self.wire = WireCounter()  # every call's bytes as the kernel counted them (:mod:`.wire`)
        self.rounds = 0
        self.overhead_s: list[float] = []  # per round: wall time minus the slowest trainer's compute
        self.rule_info: dict[str, Any] = {}  # what the merge rule reports (FitResult.info)
        self._next_id = 0
        self.known: set[str] = set()
        self._run = uuid.uuid4().hex[:8]  # trainer keys are unique per run, never reused across runs
        self.watch = LossWatch(client)
        self.replaced_by: dict[int, Trainer] = {}
        self.excluded: set[str] = set()  # workers there at the start and not chosen: never used
        self._balanced_at = -float("inf")
        self._adds_seen = 0

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self, addresses: list[str]) -> None:
        """One trainer per shard, shard ``i`` on ``addresses[i % len(addresses)]``.

        A worker lost while the trainers start (or gone before: the list may be
        a moment old) has its trainers started on a live worker instead.
        """
        # Workers already there and not chosen (config.workers < cluster size) stay
        # out of this run; only workers that join later count as new capacity.
        self.known = set(self.live_workers()) | set(addresses)
        self.excluded = self.known - set(addresses)
        futs = [self._submit(shard, addresses[i % len(addresses)]) for i, shard in enumerate(self.shards)]
        for shard, (tid, addr, fut) in zip(self.shards, futs):
            self.trainers.append(self._started(shard, tid, addr, fut, "while starting the trainers"))

    def _started(self, shard: Shard, tid: int, address: str, fut: Future, where: str) -> Trainer:
        """The trainer once its actor runs; started again on a live worker while its worker is lost."""
        while True:
            try:
                self._await(fut, START_TIMEOUT_S, address)
                return Trainer(tid, shard, address, fut)
            except WorkerLost as exc:
                fut.release()
                self._record_loss(address, tid, shard, where, exc)
                new_address = self._least_loaded(self._live_or_stop(address, tid, shard, where))
                old = tid
                tid, address, fut = self._submit(shard, new_address)
                self.events.append({"event": "shard_rebuilt", "trainer": tid, "shard": shard.index,
                                    "worker": address, "replaces": old, "where": where, "time": time.time()})
                log.info("shard_rebuilt: trainer %d on shard %d at %s (%s)", tid, shard.index, address, where)

    def _await(self, fut: Any, timeout: float, address: str | None = None) -> Any:
        """``fut.result()``, checking the scheduler meanwhile (a lost one raises :class:`SchedulerLost`).

        With ``address`` (the one worker ``fut`` may run on), raises
        :class:`WorkerLost` as soon as that worker is gone: the task would
        otherwise wait for it until ``timeout``. Polls ``fut.done()`` rather
        than calling ``result(timeout=...)`` in slices: short timeouts in
        distributed's ``sync`` raced and failed (``UnboundLocalError``) here.
        """
        deadline = time.monotonic() + timeout
        asked = time.monotonic()
        while not fut.done():
            self.watch.check_scheduler()
            if address is not None and address in self.watch.removed:
                raise WorkerLost(f"worker {address} removed by the scheduler before {fut.key} started")
            # The watch hears of removals after it subscribed; a worker that died just before is
            # seen missing from the scheduler's list (asked once a second: it is a round trip).
            if address is not None and time.monotonic() - asked > 1.0:
                asked = time.monotonic()
                if address not in self.live_workers():
                    raise WorkerLost(f"worker {address} is gone from the scheduler before {fut.key} started")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"trainer {fut.key} did not start within {timeout:.0f} s on {address}")
            time.sleep(0.02)
        try:
            return fut.result()
        except Exception as exc:
            if self.client is not None and self.client.status not in ("running", "newly-created"):
                raise SchedulerLost(f"lost the Dask scheduler at {self.watch.address} while "
                                    f"starting a trainer ({exc!r}); the run stopped: {RESUME_HINT}") from exc
            if address is not None and address not in self.live_workers():
                raise WorkerLost(f"worker {address} lost while starting {fut.key}: {exc!r}") from exc
            raise

    def _submit(self, shard: Shard, address: str) -> tuple[int, str, Future]:
        tid = self._next_id
        self._next_id += 1
        fut = self.client.submit(
            ShardTrainer, self.spec_dict, shard.future, self.config, tid, self.n_total,
            self.delays.get(tid, 0.0), actor=True, workers=[address], allow_other_workers=False,
            key=f"nnpipe-trainer-{self._run}-{tid}-shard-{shard.index}",
        )
        return tid, address, fut

    def add_trainer(self, shard: Shard, address: str, reason: str, **facts: Any) -> Trainer:
        """Start a trainer for ``shard`` on ``address`` (or a live worker if that one is lost) and log why."""
        tid, addr, fut = self._submit(shard, address)
        t = self._started(shard, tid, addr, fut, facts.get("where", reason))
        self.trainers.append(t)
        self.events.append({"event": reason, "trainer": t.id, "shard": shard.index, "worker": t.address,
                            "time": time.time(), **facts})
        log.info("%s: trainer %d on shard %d at %s", reason, t.id, shard.index, t.address)
        return t

    def close(self) -> None:
        self.watch.close()
        for t in self.trainers:
            try:
                t.future.release()
            except Exception:  # a client that lost its scheduler cannot release; nothing to leak then
                pass
        self.trainers = []

    # ---- calls -------------------------------------------------------------------------------
    def call(self, trainer: Trainer, method: str, *args: Any, inline: bool = False) -> cf.Future:
        """Call ``trainer.method(*args)`` on its worker; a concurrent future of the result."""
        self.bytes_sent += _payload_bytes(args)
        coro = call_actor(self.client, trainer.address, trainer.future.key, ShardTrainer, method, args, inline,
                          counter=self.wire)
        return self.watch.track(trainer.address, asyncio.run_coroutine_threadsafe(coro, self.client.loop.asyncio_loop))

    def call_sync(self, trainer: Trainer, method: str, *args: Any, where: str = "") -> Any:
        """``trainer.method(*args)``'s result; a lost trainer is rebuilt and the call made on the new one.

        For calls outside the rounds (checkpoint states, restores, the final state). Not round traffic.
        """
        while True:
            try:
                fut = self.call(trainer, method, *args)
                while not self.wait([fut]):
                    pass
                return self.received(fut.result(), per_round=False)
            except WorkerLost as exc:
                trainer = self.replace(trainer, exc, where or f"during {method}")

    def wait(self, futures: Any, timeout: float | None = None) -> set[cf.Future]:
        """The futures among ``futures`` that are done, waiting for at least one (or ``timeout`` s).

        Checks the scheduler every second meanwhile (:class:`SchedulerLost`).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.watch.check_scheduler()  # cheap: the client's status, no round trip
            left = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
            done, _ = cf.wait(futures, timeout=left, return_when=cf.FIRST_COMPLETED)
            if done or (deadline is not None and time.monotonic() >= deadline):
                return done

    def wait_all(self, futures: Any, timeout: float | None = None) -> set[cf.Future]:
        """The futures among ``futures`` done after waiting for all of them (at most ``timeout`` s)."""
        done, _ = cf.wait(futures, timeout=timeout)
        return done

    def record_round(self, wall_s: float, compute_s: float) -> None:
        """Count a round and the coordination time it cost beyond its slowest compute."""
        self.rounds += 1
        self.overhead_s.append(max(wall_s - compute_s, 0.0))

    def received(self, result: Any, per_round: bool = True) -> Any:
        """Account for a result's bytes: round traffic, or other (state fetched for a checkpoint)."""
        if per_round:
            self.bytes_received += _payload_bytes(result)
        else:
            self.bytes_other += _payload_bytes(result)
        return result

    # ---- recovery ----------------------------------------------------------------------------
    def live_workers(self) -> list[str]:
        # Asking a scheduler the client has lost would block for the 30 s reconnect; wait out
        # the grace period instead (check_scheduler raises SchedulerLost when it is over).
        while self.client.status not in ("running", "newly-created"):
            self.watch.check_scheduler()
            time.sleep(0.2)
        try:
            addresses = worker_addresses(self.client)
        except Exception as exc:  # KeyError 'workers', comm errors: the scheduler is not answering
            raise SchedulerLost(f"lost the Dask scheduler at {self.watch.address} ({exc!r}); the run "
                                f"stopped: {RESUME_HINT}") from exc
        return [a for a in addresses if a not in self.lost and a not in self.watch.removed]

    def replace(self, trainer: Trainer, exc: BaseException, where: str, timeout: float = LOST_WAIT_S) -> Trainer:
        """Replace ``trainer`` after its worker was lost; returns the new trainer.

        A trainer already replaced (its loss seen first by another call, e.g.
        a checkpoint's state fetch) returns its replacement.
        """
        if trainer not in self.trainers and trainer.id in self.replaced_by:
            return self.replaced_by[trainer.id]
        dead = trainer.address
        self._record_loss(dead, trainer.id, trainer.shard, where, exc)
        trainer.future.release()
        self.trainers.remove(trainer)
        address = self._least_loaded(self._live_or_stop(dead, trainer.id, trainer.shard, where, timeout))
        new = self.add_trainer(trainer.shard, address, "shard_rebuilt", replaces=trainer.id, where=where)
        self.replaced_by[trainer.id] = new
        return new

    def _record_loss(self, address: str, tid: int, shard: Shard, where: str, exc: BaseException) -> None:
        self.lost.add(address)
        self.events.append({"event": "worker_lost", "worker": address, "trainer": tid, "shard": shard.index,
                            "where": where, "error": str(exc), "time": time.time()})
        log.warning("worker %s lost (%s) %s; rebuilding shard %d", address, exc, where, shard.index)

    def _live_or_stop(self, dead: str, tid: int, shard: Shard, where: str, timeout: float = LOST_WAIT_S
                      ) -> list[str]:
        """The live workers, waiting up to ``timeout`` s for one; else the run stops with a resume hint."""
        deadline = time.monotonic() + timeout
        while True:
            live = self.live_workers()
            if live:
                return live
            if time.monotonic() > deadline:
                raise RuntimeError(f"no live Dask workers left: lost {dead} (trainer {tid}, shard "
                                   f"{shard.index}) {where} and none joined within {timeout:.0f} s; the run "
                                   f"stopped: {RESUME_HINT}")
            time.sleep(0.2)

    def _least_loaded(self, live: list[str]) -> str:
        """The live worker running the fewest of this run's trainers (ties: the first by address)."""
        load = {a: 0 for a in live}
        for t in self.trainers:
            if t.address in load:
                load[t.address] += 1
        return min(live, key=lambda a: (load[a], a))

    def rebalance(self, where: str) -> None:
        """Move trainers off a worker running several onto live workers running none.

        A lost worker's trainer is rebuilt on a survivor at once so that the
        run goes on; a replacement worker that starts later would otherwise sit
        idle while the survivor runs two trainers at half speed each, to the end
        of the run. Asks the scheduler only while some worker runs several
        trainers: when it announced a new worker, else at most every
        :data:`BALANCE_CHECK_S`. Called between rounds
        (``sync``, ``local-sgd``; ``async`` adds trainers for new workers itself).
        """
        load: dict[str, int] = {}
        for t in self.trainers:
            load[t.address] = load.get(t.address, 0) + 1
        if not load or max(load.values()) < 2:
            return
        # A worker the scheduler just added is looked at at once; otherwise (no events) every few rounds.
        if self.watch.added == self._adds_seen and time.monotonic() - self._balanced_at < BALANCE_CHECK_S:
            return
        self._adds_seen, self._balanced_at = self.watch.added, time.monotonic()
        for address in [a for a in self.live_workers() if a not in load and a not in self.excluded]:
            busiest = max(load, key=lambda a: (load[a], a))
            if load[busiest] < 2:
                break
            if self.move(next(t for t in self.trainers if t.address == busiest), address, where) is None:
                break
            load[busiest] -= 1
            load[address] = 1

    def move(self, trainer: Trainer, address: str, where: str) -> Trainer | None:
        """Start ``trainer``'s replacement on ``address`` with its state (optimizer, stream); None if it was lost.

        The new trainer takes the old one's place in :attr:`trainers`, so
        results keep their order; its stream continues exactly where the old one was.
        """
        fut = self.call(trainer, "get_state")
        try:
            while not self.wait([fut]):
                pass
            state = self.received(fut.result(), per_round=False)
        except WorkerLost:  # the next round finds the loss and rebuilds the shard as usual
            return None
        new = self.add_trainer(trainer.shard, address, "trainer_moved", moved_from=trainer.id,
                               from_worker=trainer.address, where=where)
        self.trainers.remove(new)
        self.trainers[self.trainers.index(trainer)] = new
        trainer.future.release()
        self.replaced_by[trainer.id] = new
        self.call_sync(new, "set_state", state, where=f"moving trainer {trainer.id} {where}")
        return new

    def final_opt_state(self) -> dict[str, np.ndarray]:
        """The first reachable trainer's optimizer state (for ``FitResult.opt_state``); not round traffic."""
        for t in list(self.trainers):
            fut = self.call(t, "get_state")
            try:
                while not self.wait([fut]):
                    pass
                return self.received(fut.result(), per_round=False)["opt"]
            except WorkerLost as exc:  # the result needs no rebuilt trainer: ask the next one
                self.lost.add(t.address)
                self.events.append({"event": "worker_lost", "worker": t.address, "trainer": t.id,
                                    "shard": t.shard.index, "where": "fetching the final state", "error": str(exc),
                                    "time": time.time()})
        return {}

    def joined_workers(self) -> list[str]:
        """Live workers that joined the cluster after this run started; each is reported once."""
        new = [a for a in self.live_workers() if a not in self.known]
        self.known.update(new)
        return new

    def per_worker_logs(self) -> dict[str, float]:
        """``worker/<trainer id>/samples_per_s`` over the busy time since the last call, then reset."""
        out = {}
        for t in self.trainers:
            if t.busy_s > 0:
                out[f"worker/{t.id}/samples_per_s"] = t.rows / t.busy_s
            t.rows, t.busy_s = 0, 0.0
        return out
