"""Training across a Dask cluster: ``sync``, ``local-sgd`` and ``async`` (the only package importing Dask).

Entry point: :func:`fit_distributed` ``(problem, config)``, a checked
:class:`nnpipe.core.problem.Problem` and how to train it (called by :func:`nnpipe.train`).
Cluster helpers: :func:`connect` (a context manager the Prefect flows share
with training), :func:`start_local_cluster` (its worker processes leave Ctrl-C to the driver:
:mod:`.interrupts`), :func:`worker_addresses`.
Sources bigger than the driver's memory: :func:`nnpipe.distributed.frames.fit_prepared`.

How a run goes: the rows are cut into one shard per worker and placed once
(:mod:`.shards`); a trainer actor sits next to each shard (:mod:`.pool`) and
is called directly, not through the scheduler (:mod:`.rpc`); the driver owns
the one loop (:mod:`.rounds`), and each mode is its merge rule (:mod:`.sync`,
:mod:`.local_sgd`, :mod:`.async_`; :mod:`.overlap` is ``local-sgd`` whose
workers run ahead of the merge), with the outer optimizer of
:mod:`.outer`. A lost worker's shard is recomputed by Dask and its trainer
rebuilt on a live worker.

Reporting unit
--------------
Callbacks are called as ``cb(epoch, logs)`` once per *epoch-equivalent* (one
pass worth of rows), exactly like single-process training, whatever the
number of rounds inside it. ``patience`` and ``checkpoint_every`` count the
same epochs.

Log keys
--------
All modes:
    ``train/loss``, ``train/accuracy`` (classification), ``train/samples_per_s``,
    ``lr``, ``val/loss`` and ``val/accuracy`` (or ``val/mse``, ``val/mae``,
    ``val/r2``) when validation data is given, and ``worker/<i>/samples_per_s``
    for each trainer ``i`` (rows per second of that trainer's compute time),
    ``dist/bytes_sent`` and ``dist/bytes_received`` (the epoch's bytes on the
    wire between the driver and the trainers, counted by the kernel: :mod:`.wire`).
``sync``:
    ``dist/straggler_wait_s`` (summed over the epoch's steps: first to last
    arrival of each step's gradients).
``local-sgd``:
    ``dist/consensus_distance`` (mean over the epoch's rounds of the mean L2
    distance of the trainers' parameters from their average),
    ``dist/consensus_distance_last`` (the epoch's last round),
    ``dist/outer_step_norm`` (mean L2 norm of the outer optimizer's steps),
    ``dist/straggler_wait_s``, ``dist/rounds``. With ``overlap`` (:mod:`.overlap`):
    ``dist/idle_s`` (seconds each worker sat idle between its rounds, mean
    over workers) instead of ``dist/straggler_wait_s``.
``async``:
    ``dist/staleness`` (mean staleness of the epoch's merges),
    ``dist/staleness_max``, ``dist/merge_weight`` (mean staleness weight),
    ``dist/outer_step_norm``, ``dist/merges``, ``dist/dropped``. No straggler
    wait: there is no barrier.
Warm-up epochs (``warmup_epochs``) of ``local-sgd`` and ``async`` log as ``sync``.

``FitResult.info`` carries ``mode``, ``workers``, ``address`` (scheduler),
``shards``, ``events`` (dicts with ``event`` in ``worker_lost``,
``shard_rebuilt``, ``worker_joined``), ``bytes_sent_per_round``,
``bytes_received_per_round`` (payload bytes of the arrays the driver sent and
received, averaged over rounds; a round is one call to every trainer, and in
``async`` one dispatch of every trainer), ``rounds``, ``coordination_s_per_round``
(median over rounds of the round's wall time minus its slowest compute); for
``local-sgd``, ``rounds_log`` (one dict per round: ``consensus_distance``,
``outer_step_norm``); for ``async``, ``merges_by_trainer`` and ``merges``
(one dict per merge: ``trainer``, ``staleness``, ``weight``, ``outer_step_norm``).
``wire_measured``, and when True ``wire_bytes_sent``, ``wire_bytes_received``
(the run's totals), their ``_per_epoch`` means and ``wire_s_per_epoch_1gbit``
(the seconds an epoch's bytes take on a 1 Gbit/s link, the busier direction).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from nnpipe import blas
from nnpipe.config import TrainConfig
from nnpipe.core.network import NetworkSpec
from nnpipe.core.problem import Problem
from nnpipe.distributed.cluster import (
    connect,
    start_local_cluster,
    wait_for_workers,
    worker_addresses,
)
from nnpipe.distributed.protocol import Pool
from nnpipe.distributed.wire import WireCounter, link_seconds
from nnpipe.results import Callback, FitResult

log = logging.getLogger("nnpipe.distributed")

__all__ = ["fit_distributed", "connect", "start_local_cluster", "worker_addresses", "train_on_shards"]


def fit_distributed(problem: Problem, config: TrainConfig, *, callbacks: tuple[Callback, ...] | list[Callback] = (),
                    client: Any = None, address: str | None = None,
                    delays: dict[int, float] | None = None) -> FitResult:
    """Train ``problem.theta`` on ``problem``'s rows across Dask workers with ``config.mode``.

    Parameters
    ----------
    problem : Problem
        The network, starting parameters (not modified), training rows (cut
        into ``config.workers`` shards) and optional validation rows, evaluated
        on the driver after every epoch (:class:`nnpipe.core.problem.Problem`).
    config : TrainConfig
        ``mode`` in ``sync``, ``local-sgd``, ``async``; ``workers`` shards.
    callbacks : sequence of callable
        ``cb(epoch, logs)`` once per epoch-equivalent (see the package docstring for keys).
    client : distributed.Client, optional
    address : str, optional
        Scheduler address; else ``DASK_SCHEDULER_ADDRESS``; else a local cluster for this call.
    delays : dict of int to float, optional
        Trainer id -> seconds each of its local rounds sleeps first: stragglers
        on purpose, for tests and demos.

    Returns
    -------
    FitResult
    """
    if config.mode not in ("sync", "local-sgd", "async"):
        raise ValueError(f"fit_distributed trains modes 'sync', 'local-sgd' or 'async', got mode={config.mode!r}")
    if len(problem.X) < config.workers:
        raise ValueError(f"cannot split {len(problem.X)} rows across workers={config.workers}")
    from nnpipe.distributed.shards import place_shards

    with connect(address=address, client=client, workers=config.workers) as c:
        addresses = wait_for_workers(c, config.workers)
        shards = place_shards(c, problem.X, problem.Y, addresses[: config.workers])
        try:
            return train_on_shards(c, shards, problem.spec, problem.theta, config, validation=problem.validation,
                                   callbacks=callbacks, addresses=addresses, delays=delays)
        finally:
            for s in shards:
                s.future.release()


def run_mode(pool: Pool, theta: np.ndarray, config: TrainConfig, reporter: Any, retune: bool = False
             ) -> tuple[np.ndarray, dict, int]:
    """Run ``config.mode``'s merge rule (after its sync warm-up epochs) on ``pool``'s trainers.

    ``pool`` is a :class:`.pool.TrainerPool` or anything with its interface
    (the tests use an in-process one). ``retune``: the round size was chosen
    for the user, so ``local-sgd`` and ``async`` choose ``sync_every`` again
    from their first rounds (:class:`nnpipe.distributed.round_size.RoundRetuner`).
    Returns ``(theta, opt_state, last_epoch)``.
    """
    from nnpipe.distributed import rounds
    from nnpipe.distributed.async_ import MergeOnArrival
    from nnpipe.distributed.local_sgd import AverageParameters
    from nnpipe.distributed.overlap import OverlapAverage
    from nnpipe.distributed.round_size import RoundRetuner
    from nnpipe.distributed.sync import AverageGradients

    if config.mode == "sync":
        return rounds.run(pool, theta, config, reporter, AverageGradients(pool, config, theta))
    if config.mode == "local-sgd" and config.overlap:
        rule: rounds.MergeRule = OverlapAverage(pool, config, theta)
    else:
        rule = {"local-sgd": AverageParameters, "async": MergeOnArrival}[config.mode](pool, config, theta)
    if retune:
        rule.retuner = RoundRetuner(config, pool.n_total, len(pool.shards))
    warmup = None
    if config.sync_warmup_epochs():
        # Post-local-SGD: every worker steps on its own batch_size rows, gradients all-reduced.
        warmup = AverageGradients(pool, config, theta, batch=config.batch_size * len(pool.shards))
    return rounds.run(pool, theta, config, reporter, rule, warmup)


def wire_info(wire: WireCounter, history: dict[str, list[float]]) -> dict[str, Any]:
    """The run's bytes on the wire (``FitResult.info``): totals, per epoch, and the seconds per epoch at 1 Gbit/s.

    Per epoch is the mean of the epochs' own counts (``dist/bytes_*``); the
    totals add the calls outside the epochs (starting state, the final state).
    """
    if not wire.measured:
        return {"wire_measured": False}
    sent = float(np.mean(history.get("dist/bytes_sent") or [wire.sent]))
    received = float(np.mean(history.get("dist/bytes_received") or [wire.received]))
    return {"wire_measured": True, "wire_bytes_sent": wire.sent, "wire_bytes_received": wire.received,
            "wire_bytes_sent_per_epoch": sent, "wire_bytes_received_per_epoch": received,
            "wire_s_per_epoch_1gbit": link_seconds(sent, received)}


def train_on_shards(client: Any, shards: list, spec: NetworkSpec, theta: np.ndarray, config: TrainConfig, *,
                    validation: tuple[np.ndarray, np.ndarray] | None = None,
                    callbacks: tuple[Callback, ...] | list[Callback] = (),
                    addresses: list[str] | None = None, delays: dict[int, float] | None = None,
                    retune: bool = False) -> FitResult:
    """Train on shards already placed on the cluster (see :mod:`.shards`, :mod:`.frames`).

    ``retune``: the round size was chosen for the user (see :func:`run_mode`).
    """
    from nnpipe.distributed import rounds
    from nnpipe.distributed.pool import TrainerPool
    from nnpipe.distributed.reporter import Reporter
    from nnpipe.distributed.shards import describe

    theta = np.array(theta, dtype=spec.dtype, copy=True)
    if theta.shape != (spec.n_params,):
        raise ValueError(f"theta has shape {theta.shape}, expected ({spec.n_params},) for {spec}")
    if validation is not None and not callable(validation):
        validation = (np.ascontiguousarray(validation[0], dtype=spec.dtype), np.asarray(validation[1]))
    n_total = sum(s.rows for s in shards)
    addresses = addresses or wait_for_workers(client, len(shards))
    reporter = Reporter(spec, config, validation, callbacks, config.mode)
    log.info("%s training: %d shards, %d rows, cluster %s", config.mode, len(shards), n_total,
             client.scheduler.address)
    rounds.warn_small_steps(config, [s.rows for s in shards])
    pool = TrainerPool(client, shards, spec, config, n_total, delays=delays)
    reporter.wire = pool.wire
    t0 = time.perf_counter()
    try:
        pool.start(addresses[: len(shards)])
        # The driver shares the cores with local workers: a multi-threaded BLAS
        # here (validation, averaging) would fight them and can be 10x slower.
        with blas.single_thread():
            theta, state, last_epoch = run_mode(pool, theta, config, reporter, retune=retune)
    finally:
        pool.close()
    # A round is one call to every trainer (sync, local-sgd) or one dispatch of one trainer (async).
    rounds = max(pool.rounds, 1)
    info = {
        "mode": config.mode,
        "workers": len(shards),
        "address": client.scheduler.address,
        "shards": describe(shards),
        "events": pool.events,
        "rounds": rounds,
        "bytes_sent_per_round": pool.bytes_sent / rounds * (len(shards) if config.mode == "async" else 1),
        "bytes_received_per_round": pool.bytes_received / rounds * (len(shards) if config.mode == "async" else 1),
        "bytes_other": pool.bytes_other,  # optimizer states fetched for checkpoints and the result
        "coordination_s_per_round": float(np.median(pool.overhead_s)) if pool.overhead_s else 0.0,
        "param_bytes": int(theta.nbytes),
        **wire_info(pool.wire, reporter.history),
        "seconds": time.perf_counter() - t0,
    }
    info.update(pool.rule_info)
    return reporter.result(theta, state, last_epoch, info)
