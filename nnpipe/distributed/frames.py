"""Training on a large source with the rows staying on the workers.

The core describes the source (:mod:`nnpipe.sources`), validates, splits and
reduces its statistics (:mod:`nnpipe.sources.prep`) and evaluates it
(:mod:`nnpipe.sources.evaluate`) through a *runner*; :func:`cluster_runner` is the
Dask one: pieces are read and summarised on the workers, and a reduction
runs on a worker too, so the driver receives one small result per step.

Shards are tasks (:func:`place_source_shards`) that read the segments of
training rows ``[lo_i, hi_i)`` on a worker, balanced by rows and rebuilt from
the source if their worker dies. A shard is held as training-dtype arrays when
its bytes fit ``config.memory_share`` of the worker's memory limit, else it is
a :class:`~nnpipe.sources.streaming.RowStream`. A streamed shard decodes each
piece once: the first pass keeps the decoded segments on the worker's local
disk (:mod:`nnpipe.sources.segment_cache`, a directory per run under the
worker's local directory) and later passes read them from there. The run's
end removes them on every worker, whether it finished or failed, together with
any left by a worker that died.
"""

from __future__ import annotations

import logging
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from nnpipe import blas
from nnpipe.config import TrainConfig
from nnpipe.core.network import Network, NetworkSpec, init_params
from nnpipe.distributed.cluster import connect, wait_for_workers, worker_addresses
from nnpipe.distributed.rpc import WorkerLost
from nnpipe.distributed.shards import Shard, row_bounds
from nnpipe.results import Callback, FitResult
from nnpipe.sources import segment_cache
from nnpipe.sources.evaluate import add_sums, array_sums, combine, evaluate, prep_fields
from nnpipe.sources.prep import TRAIN, VAL, PreparedSource, local_runner
from nnpipe.sources.streaming import RowStream, shard_arrays, shard_bytes

log = logging.getLogger("nnpipe.distributed")


@contextmanager
def runner_for(mode: str, address: str | None = None, client: Any = None, workers: int = 2) -> Iterator[Callable]:
    """Where pieces are read: this process for ``single`` (no cluster given), else the Dask cluster."""
    if mode == "single" and client is None and address is None:
        yield local_runner
        return
    with connect(address=address, client=client, workers=workers) as c:
        yield cluster_runner(c)


def cluster_runner(client: Any) -> Callable:
    """``run(fn, items, reduce=None)`` on the workers; with ``reduce`` the combination runs on a worker too."""

    def run(fn: Callable, items: list, reduce: Callable | None = None) -> Any:
        futures = client.map(fn, items, pure=False)
        try:
            if reduce is None:
                return client.gather(futures)
            return client.submit(reduce, futures, pure=False).result()
        finally:
            for f in futures:
                f.release()

    return run


def worker_memory_limit(client: Any, addresses: list[str]) -> int:
    """The smallest memory limit among ``addresses`` (bytes); the machine's RAM when unlimited."""
    info = client.scheduler_info(n_workers=-1)["workers"]
    limits = [int(info[a].get("memory_limit") or 0) for a in addresses if a in info]
    limits = [x for x in limits if x > 0]
    if limits:
        return min(limits)
    return int(np.prod([__import__("os").sysconf(k) for k in ("SC_PAGE_SIZE", "SC_PHYS_PAGES")]))


def _cache_roots(local_directory: str) -> tuple[Path, list[Path]]:
    """This worker's cache root, and every root on its machine (the other workers' local directories)."""
    own = Path(local_directory) / segment_cache.DIR_NAME
    return own, sorted({own, *Path(local_directory).parent.glob(f"*/{segment_cache.DIR_NAME}")})


def _make_stream(segments: list, lo: int, seed: int, stream_id: int, cache_run: str | None = None,
                 **kw: Any) -> dict[str, Any]:
    cache = None
    if cache_run is not None:  # runs on the worker: its own local directory holds the cache
        from distributed import get_worker

        cache = segment_cache.SegmentCache(str(_cache_roots(get_worker().local_directory)[0]), cache_run, stream_id)
    return {"stream": RowStream(segments, lo, seed, stream_id, cache=cache, **kw), "lo": int(lo)}


def _clear_worker_caches(run: str | None, dask_worker: Any = None) -> dict[str, Any]:
    """On a worker: remove ``run``'s cache directories and stale ones of dead workers on this machine."""
    return segment_cache.clear(_cache_roots(dask_worker.local_directory)[1], run)


def clear_stream_caches(client: Any, run: str | None) -> dict[str, Any]:
    """Remove ``run``'s decoded-segment caches on every worker (and any stale ones); the summed counters.

    A worker that cannot answer (it died meanwhile) is skipped: its directory is
    stale and the next clear on its machine removes it.
    """
    out: dict[str, Any] = {"removed": [], **segment_cache.no_counts()}
    try:
        per_worker = client.run(_clear_worker_caches, run, on_error="ignore")
    except Exception as exc:  # cleanup must never hide the run's own outcome
        log.warning("streaming: could not clear the cache on the workers (%s)", exc)
        return out
    for r in per_worker.values():
        if isinstance(r, dict):
            out["removed"] += r["removed"]
            for k in segment_cache.no_counts():
                out[k] += r[k]
    return out


def place_source_shards(client: Any, prepared: PreparedSource, spec: NetworkSpec, addresses: list[str], *,
                        code: int = TRAIN, stream: bool, seed: int = 0, cache_run: str | None = None) -> list[Shard]:
    """One recomputable shard future per address: split ``code``'s rows cut evenly, read on the workers.

    A streamed shard with ``cache_run`` caches its decoded segments under that run id
    (:func:`clear_stream_caches` removes them).
    """
    n = prepared.rows(code)
    bounds = row_bounds(n, len(addresses))
    kw = {"spec": spec.to_dict(), "prep": prep_fields(prepared), "code": code, "read": prepared.read_kwargs()}
    run = uuid.uuid4().hex[:8]  # keys unique per run: one run's release never touches another's
    shards = []
    for i, addr in enumerate(addresses):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        segs = prepared.segments(code, lo, hi)
        if stream:
            fut = client.submit(_make_stream, segs, lo, seed, i, cache_run, **kw, key=f"nnpipe-stream-{code}-{i}-{run}",
                                workers=[addr], allow_other_workers=True, pure=False)
        else:
            fut = client.submit(shard_arrays, segs, lo, **kw, key=f"nnpipe-source-shard-{code}-{i}-{run}",
                                workers=[addr], allow_other_workers=True, pure=False)
        shards.append(Shard(i, lo, hi, fut))
    return shards


def _shard_sums(shard: dict, spec: dict, theta: np.ndarray, n_classes: int) -> dict[str, Any]:
    return array_sums(Network(NetworkSpec.from_dict(spec)), theta, shard["X"], shard["Y"], n_classes)


class SourceValidation:
    """``f(theta) -> val metrics`` from sums reduced on the cluster (a :class:`Reporter` validation)."""

    def __init__(self, client: Any, prepared: PreparedSource, spec: NetworkSpec, shards: list[Shard] | None):
        self.client, self.prepared, self.spec, self.shards = client, prepared, spec, shards
        self.n_classes = 0 if prepared.classes is None else len(prepared.classes)

    def __call__(self, theta: np.ndarray) -> dict[str, float]:
        if self.shards is None:  # streamed: read the validation rows where they are
            return evaluate(self.prepared, self.spec, theta, VAL, cluster_runner(self.client), raw_units=False)[0]
        futs = [self.client.submit(_shard_sums, s.future, self.spec.to_dict(), theta, self.n_classes, pure=False)
                for s in self.shards]
        total = self.client.submit(add_sums, futs, pure=False).result()
        return combine(total, self.prepared.task, raw_units=False)


class _Echo:
    """A stand-in trainer: its method returns the parameters it was sent."""

    def echo(self, theta: np.ndarray) -> np.ndarray:
        return theta


def _round_trips(client: Any, addresses: list[str], theta: np.ndarray, n: int, inline: bool) -> list[float]:
    """Seconds of ``n`` rounds with nothing to compute: the parameters to an actor on every address and back.

    A round calls every worker at once and waits for the last, by the loops'
    own direct call, as a training round does. Measured on the 2-core machine:
    a round to 2 workers costs 2.4-2.7 ms where one echo to one worker takes
    0.9 ms, so timing a single worker would pick rounds too small.
    """
    import asyncio

    from nnpipe.distributed.rpc import call_actor

    tag = uuid.uuid4().hex[:8]
    actors = [client.submit(_Echo, actor=True, workers=[a], key=f"nnpipe-echo-{i}-{tag}")
              for i, a in enumerate(addresses)]
    try:
        for actor, address in zip(actors, addresses):
            _wait_on(client, actor, address)
        out = []
        loop = client.loop.asyncio_loop
        for _ in range(n):
            t0 = time.perf_counter()
            calls = [asyncio.run_coroutine_threadsafe(call_actor(client, a, actor.key, _Echo, "echo", (theta,), inline),
                                                      loop) for a, actor in zip(addresses, actors)]
            for call in calls:
                call.result(timeout=60)
            out.append(time.perf_counter() - t0)
        return out
    finally:
        for actor in actors:
            actor.release()


def _wait_on(client: Any, fut: Any, address: str, timeout: float = 60.0) -> None:
    """Wait for ``fut``, restricted to ``address``; :class:`WorkerLost` within a second of that worker leaving."""
    deadline, asked = time.monotonic() + timeout, time.monotonic()
    while not fut.done():
        if time.monotonic() - asked > 1.0:
            asked = time.monotonic()
            if address not in worker_addresses(client):
                raise WorkerLost(f"worker {address} left while measuring the round size")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{fut.key} did not start on {address} within {timeout:.0f} s")
        time.sleep(0.02)
    fut.result()


def _time_steps(spec: dict, batch: int, seconds: float = 0.2) -> float:
    """Seconds of compute per row of one optimizer step at ``batch`` rows (on a worker), over ``seconds``."""
    blas.prepare_training_process()
    ns = NetworkSpec.from_dict(spec)
    net = Network(ns)
    theta = init_params(ns, 0)
    grad = np.empty_like(theta)
    views, gviews = net.views(theta), net.views(grad)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((batch, ns.n_inputs)).astype(ns.dtype)
    Y = (rng.integers(0, ns.n_outputs, batch) if ns.head == "softmax"
         else rng.random((batch, ns.n_outputs)).round().astype(ns.dtype))
    net.step_views(views, gviews, X, Y, 0.0, True)
    steps, t0 = 0, time.perf_counter()
    while steps < 5 or time.perf_counter() - t0 < seconds:
        net.step_views(views, gviews, X, Y, 0.0, True)
        steps += 1
    return (time.perf_counter() - t0) / (steps * batch)


def auto_round(client: Any, config: TrainConfig, spec: NetworkSpec, addresses: list[str], n_train: int
               ) -> tuple[TrainConfig, dict[str, float]]:
    """Measure a round and a step on the workers, then choose the round size (:func:`nnpipe.distributed.round_size.choose_round`).

    Both are measured as training meets them: the round trip is a round to
    every worker at once by the loops' direct call (not through the
    scheduler); the step time is the slowest worker's while all of them step
    at once (they share the machine's cores and memory bandwidth).
    """
    from nnpipe.distributed.round_size import LOCAL_BATCH, choose_round

    theta = init_params(spec, 0)
    n_workers = len(addresses)
    for attempt in range(3):
        try:
            rtts = _round_trips(client, addresses, theta, 20, inline=config.mode == "sync")
            break
        except WorkerLost as exc:  # measure again on the workers still there; training rebuilds the shard
            live = set(worker_addresses(client))
            addresses = [a for a in addresses if a in live] or sorted(live)[:n_workers]
            log.warning("%s; measuring the round again on %d worker(s)", exc, len(addresses))
            if attempt == 2 or not addresses:
                raise
    batch = config.batch_size if config.mode == "sync" else max(config.batch_size, LOCAL_BATCH)
    # Any worker may time a step if the chosen one is lost meanwhile: a task never waits for a dead worker.
    steps = [client.submit(_time_steps, spec.to_dict(), max(batch, 64), workers=[a], allow_other_workers=True,
                           pure=False) for a in addresses]
    row_s = max(client.gather(steps))
    return choose_round(config, float(np.median(rtts)), float(row_s), n_train, n_workers)


def fit_prepared(prepared: PreparedSource, spec: NetworkSpec, theta: np.ndarray, config: TrainConfig, *,
                 callbacks: tuple[Callback, ...] | list[Callback] = (), client: Any = None,
                 address: str | None = None) -> FitResult:
    """Train on a prepared source across the cluster; the rows stay on the workers.

    ``FitResult.info`` adds ``data_path`` (``in-memory`` or ``streaming``),
    ``shard_bytes``, ``memory_budget`` and, when the round size was chosen,
    the ``round/*`` measurements.
    """
    from nnpipe.distributed import train_on_shards

    with connect(address=address, client=client, workers=config.workers) as c:
        addresses = wait_for_workers(c, config.workers)[: config.workers]
        n_train = prepared.rows(TRAIN)
        rows = -(-n_train // len(addresses))
        need = shard_bytes(spec, rows) + shard_bytes(spec, -(-prepared.rows(VAL) // len(addresses)))
        budget = int(config.memory_share * worker_memory_limit(c, addresses))
        stream = config.stream if config.stream is not None else need > budget
        path = "streaming" if stream else "in-memory"
        log.info("source %s: %s shards (%.1f MB per worker, budget %.1f MB = %.0f%% of the worker limit)",
                 prepared.source.location, path, need / 1e6, budget / 1e6, 100 * config.memory_share)
        round_facts: dict[str, float] = {}
        if config.auto_round:
            config, round_facts = auto_round(c, config, spec, addresses, n_train)
            log.info("round size chosen: batch_size=%d sync_every=%d (round trip %.2f ms, %.2f us/row; "
                     "expected coordination %.1f%%)", config.batch_size, config.sync_every,
                     1e3 * round_facts["round/rtt_s"], 1e6 * round_facts["round/row_s"],
                     100 * round_facts["round/expected_coordination_share"])
        cache_run = segment_cache.new_run_id() if stream and config.stream_cache else None
        if cache_run is not None:
            swept = clear_stream_caches(c, None)["removed"]  # left by workers that died in earlier runs
            if swept:
                log.info("streaming: removed %d stale cache dir(s) of dead workers", len(swept))
            log.info("streaming: each worker decodes its pieces once (pass 1) and keeps them under its local "
                     "directory (%s/<run>-s<shard>-p<pid>, run %s) for later passes", segment_cache.DIR_NAME, cache_run)
        shards = place_source_shards(c, prepared, spec, addresses, stream=stream, seed=config.seed,
                                     cache_run=cache_run)
        # Validation rows stay in memory on the workers unless streaming and they take a tenth of the budget.
        val_bytes = shard_bytes(spec, -(-prepared.rows(VAL) // len(addresses)))
        val_shards = None
        if prepared.rows(VAL) >= len(addresses) and (not stream or val_bytes <= budget // 10):
            val_shards = place_source_shards(c, prepared, spec, addresses, code=VAL, stream=False)
        validation = SourceValidation(c, prepared, spec, val_shards) if prepared.rows(VAL) else None
        try:
            result = train_on_shards(c, shards, spec, theta, config, validation=validation, callbacks=callbacks,
                                     addresses=addresses, retune=config.auto_round)
        finally:
            for s in shards + (val_shards or []):
                s.future.release()
            cache = clear_stream_caches(c, cache_run) if cache_run is not None else None
    if cache is not None:
        log.info("streaming: %d piece(s) decoded, %d read from the cache; removed %d cache dir(s)",
                 cache["decoded"], cache["cache_reads"], len(cache["removed"]))
        result.info.update({"stream_decoded": cache["decoded"], "stream_cache_reads": cache["cache_reads"]})
    retuned = {k: v for k, v in result.info.items() if k.startswith("round/")}  # the first rounds' choice
    result.info.update({"data_path": path, "shard_bytes": int(need), "memory_budget": budget,
                        "batch_size": config.batch_size, "sync_every": config.sync_every, **round_facts, **retuned})
    if "round/sync_every" in retuned:
        result.info["sync_every"] = int(retuned["round/sync_every"])
    return result
