"""Two workers against one process: where a round's time goes, and what overlapped rounds buy.

Task: ``bench_scale.py``'s teacher task held in memory (N rows x 40 float32
features, labels from the fixed teacher network; the first 70% train, the
next 10% validate), network 40-64-32-10 relu, Adam lr 1e-3, 256 rows per step,
``sync_every`` 170 (what ``nnpipe train`` chooses at 1M rows), 2 workers.
Prints, in one invocation:

- the single-process rate (its own process, one BLAS thread, batch 256),
  measured again before each distributed run (the ratio uses the one just before);
- the parallel ceiling: one trainer's bare step loop on one worker alone, and
  on both workers at once (what two processes can give on this machine now),
  on a 100k-row shard and on a shard of the run's size (random rows gathered
  from a larger array miss the cache more often);
- per run (``local-sgd`` with ``overlap`` 0, 1, 2, and ``async``; then ``async``
  and ``local-sgd`` overlap 2 without validation rows, like for like with the
  single reference, which evaluates nothing): samples/s,
  the ratio to single, the workers' own compute rates, efficiency (the run's
  rate over the sum of the workers' own), validation accuracy, the driver
  process's CPU (its share of a core during the run), and for
  ``local-sgd`` the round's breakdown per trainer: compute, idle (waiting for
  parameters, the barrier and the merge), and of the idle the slowest
  trainer's extra compute (barrier), the driver's merge, and the rest
  (transfer, serialisation and dispatch).

Run: ``python bench/bench_two_workers.py`` (1M rows, ~4 min) or ``--rows 200000``.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from multiprocessing import get_context

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from nnpipe.config import TrainConfig  # noqa: E402
from nnpipe.core.network import NetworkSpec, init_params  # noqa: E402
from nnpipe.core.problem import Problem  # noqa: E402
from nnpipe.core.training import fit  # noqa: E402
from nnpipe.distributed import fit_distributed  # noqa: E402

from bench_distributed import step_loop  # noqa: E402  (bench/ is on sys.path: the script's folder)

SPEC = NetworkSpec(40, (64, 32), ("relu", "relu"), 10, dtype="float32")
BASE = dict(optimizer="adam", lr=1e-3, dtype="float32", seed=0, batch_size=256)
_REF: dict = {}


def make_task(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """bench_scale's rows and teacher labels, in memory; standardised with the training rows' moments."""
    from bench_scale import N_FEATURES, teacher_labels  # one task for both benches (bench/ is on sys.path)

    X = np.random.default_rng([0, 99]).standard_normal((n, N_FEATURES)).astype(np.float32)
    y = teacher_labels(X).astype(np.intp)
    a, b = int(0.7 * n), int(0.8 * n)
    X = (X - X[:a].mean(0)) / X[:a].std(0)
    return X[:a], y[:a], X[a:b], y[a:b]


def _ref_init(n: int) -> None:
    Xtr, ytr, _, _ = make_task(n)
    _REF.update(X=Xtr, y=ytr, theta=init_params(SPEC, 0))


def _ref_rate() -> float:
    """One single-process epoch's samples/s (batch 256, one BLAS thread)."""
    with threadpool_limits(1):
        r = fit(Problem(SPEC, _REF["theta"], _REF["X"], _REF["y"]), TrainConfig(epochs=1, **BASE))
    return float(r.history["train/samples_per_s"][-1])


def breakdown(rounds_log: list[dict]) -> str:
    """Mean per round and trainer: compute, idle, and the idle's parts (plain local-sgd's rounds)."""
    logs = [r for r in rounds_log if "wall_s" in r][1:]  # the first round pays one-time costs
    if not logs:
        return ""
    compute = np.mean([r["compute_s"] for r in logs])
    wall = np.mean([r["wall_s"] for r in logs])
    merge = np.mean([r["merge_s"] for r in logs])
    barrier = np.mean([r["straggler_s"] for r in logs])
    idle = wall + merge - compute
    rest = idle - barrier - merge
    return (f"round: compute {1e3 * compute:.1f} ms, idle {1e3 * idle:.2f} ms ({idle / (idle + compute):.1%}) = "
            f"barrier {1e3 * barrier:.2f} + merge {1e3 * merge:.3f} + transfer/dispatch {1e3 * rest:.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--sync-every", type=int, default=170)
    ap.add_argument("--only", default="", help="run only the runs whose name contains this")
    a = ap.parse_args()
    Xtr, ytr, Xva, yva = make_task(a.rows)
    theta0 = init_params(SPEC, 0)
    print(f"task: {len(Xtr):,} train rows x 40, net {SPEC.sizes} ({SPEC.n_params} params), batch 256, "
          f"K={a.sync_every}, {a.epochs} epochs; {os.cpu_count()} cores", flush=True)
    ref_pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=_ref_init, initargs=(a.rows,))
    singles = [ref_pool.submit(_ref_rate).result()]
    print(f"single process: {singles[0]:,.0f} samples/s", flush=True)
    runs = [("local-sgd, overlap 0", dict(mode="local-sgd", overlap=0)),
            ("local-sgd, overlap 1", dict(mode="local-sgd", overlap=1)),
            ("local-sgd, overlap 2", dict(mode="local-sgd", overlap=2)),
            ("async", dict(mode="async")),
            # Like for like with the single reference, which evaluates nothing: the runs above score
            # 100k validation rows on the driver every epoch, CPU taken from the workers on 2 cores.
            ("async, no validation rows", dict(mode="async")),
            ("local-sgd, overlap 2, no validation rows", dict(mode="local-sgd", overlap=2))]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client:
        workers = sorted(client.scheduler_info()["workers"])
        # A trainer's bare step loop: bench_distributed's, on this network, 170 steps a round.
        for rows in (100_000, len(Xtr) // 2):  # a cache-sized shard, and the run's own shard size
            loop = partial(step_loop, 2.0, 256, SPEC, rows, 170)
            alone = client.run(loop, workers=workers[:1])[workers[0]]
            both = client.run(loop, workers=workers)
            print(f"bare step loop on {rows:,} rows: one worker alone {alone:,.0f} samples/s; both at once "
                  f"{' + '.join(f'{v:,.0f}' for v in both.values())} = {sum(both.values()):,.0f} "
                  f"({sum(both.values()) / singles[0]:.2f}x single)", flush=True)
        for name, kw in runs:
            if a.only not in name:
                continue
            problem = Problem(SPEC, theta0, Xtr, ytr, None if "no validation" in name else (Xva, yva))
            single = ref_pool.submit(_ref_rate).result()
            singles.append(single)
            cfg = TrainConfig(workers=2, epochs=a.epochs, sync_every=a.sync_every, **kw, **BASE)
            cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            r = fit_distributed(problem, cfg, client=client)
            cpu1, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t0
            # The driver process (loop, client, scheduler): the cores it takes from the workers.
            driver_cpu = (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / wall
            rate = float(np.mean(r.history["train/samples_per_s"][1:]))
            own = [float(np.median(v[1:])) for k, v in r.history.items() if k.startswith("worker/")]
            print(f"{name:22s} {rate:10,.0f} samples/s  {rate / single:.2f}x single ({single:,.0f})  workers' own "
                  f"{' + '.join(f'{v:,.0f}' for v in own)}  efficiency {rate / sum(own):.0%}  "
                  f"val acc {r.history.get('val/accuracy', [float('nan')])[-1]:.4f}  "
                  f"driver CPU {driver_cpu:.0%} of a core", flush=True)
            text = breakdown(r.info.get("rounds_log", []))
            if text:
                print(f"{'':22s} {text}", flush=True)
            if "dist/idle_s" in r.history:
                rounds = r.history["dist/rounds"][-1]
                print(f"{'':22s} idle per trainer per round {1e3 * np.mean(r.history['dist/idle_s'][1:]) / rounds:.2f} ms "
                      f"(merge on the driver {1e3 * np.mean([x['merge_s'] for x in r.info['rounds_log']]):.3f} ms, "
                      f"while the trainers compute)", flush=True)
    print(f"single-process spread over the run: {min(singles):,.0f} - {max(singles):,.0f} samples/s")
    ref_pool.shutdown()


if __name__ == "__main__":
    main()
