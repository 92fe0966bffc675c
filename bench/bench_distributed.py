"""Distributed training throughput against single-process training, measured in one run.

Task: ``make_classification(n_samples=200_000, n_features=64, n_informative=32,
n_classes=10, random_state=0)``, 90/10 train/validation split, standardised;
network 64-256-256-10 relu, Adam, float32. Prints:

- samples/s single-process (BLAS pinned to one thread, like a worker) at the
  per-worker batch (256) and at the sync global batch (2048);
- samples/s for sync (global batch 2048), local-sgd and async (K=50 and K=10,
  256 rows per worker per step) with 1 and 2 workers, and the ratio to a
  single-process epoch at the matching batch measured just before each run;
- seconds to 0.9 validation accuracy (single-process and each mode, 2 workers);
- bytes the driver sends and receives per round (payload of the arrays), next
  to the budget ``workers * 2 * param bytes``;
- efficiency: throughput over the sum of the trainers' own compute rates
  (1.0 = coordination costs nothing; unlike the ratio, other load on the
  machine does not move it much), and the parallel ceiling right now: the
  same step loop on one worker alone and on two at once;
- coordination overhead per round with 8 workers (rounds of one tiny step, so
  the wall time per round is almost all coordination).

Run: ``python bench/bench_distributed.py`` (a few minutes) or ``--quick``.
Timings on a busy machine are noisy; ratios are against a reference measured
in the same run.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402
from sklearn.datasets import make_classification  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from nnpipe.config import TrainConfig  # noqa: E402
from nnpipe.core.network import NetworkSpec, init_params  # noqa: E402
from nnpipe.core.problem import Problem  # noqa: E402
from nnpipe.core.training import fit  # noqa: E402
from nnpipe.distributed import fit_distributed  # noqa: E402


def make_task(n_samples: int):
    X, y = make_classification(n_samples=n_samples, n_features=64, n_informative=32, n_classes=10, random_state=0)
    cut = int(0.9 * len(X))
    mean, std = X[:cut].mean(0), X[:cut].std(0)
    X = ((X - mean) / std).astype(np.float32)
    return X[:cut], y[:cut].astype(np.intp), X[cut:], y[cut:].astype(np.intp)


SPEC = NetworkSpec(64, (256, 256), ("relu", "relu"), 10, dtype="float32")


_REF: dict = {}


def _ref_init(n_samples: int) -> None:
    """In the reference process: rebuild the same task (deterministic) instead of shipping 46 MB."""
    Xtr, ytr, Xva, yva = make_task(n_samples)
    _REF.update(X=Xtr, y=ytr, Xva=Xva, yva=yva, theta=init_params(SPEC, 0))


def _ref_rate(batch: int, n_epochs: int) -> float:
    with threadpool_limits(1):  # one BLAS thread, like a worker
        r = fit(Problem(SPEC, _REF["theta"], _REF["X"], _REF["y"]),
                TrainConfig(epochs=n_epochs, batch_size=batch, optimizer="adam", lr=1e-3, dtype="float32", seed=0))
    return steady_rate(r.history)


def _ref_time_to(target: float, n_epochs: int):
    hit = TimeTo(target)
    with threadpool_limits(1):
        hit.run(fit, Problem(SPEC, _REF["theta"], _REF["X"], _REF["y"], (_REF["Xva"], _REF["yva"])),
                TrainConfig(epochs=n_epochs, batch_size=256, optimizer="adam", lr=1e-3, dtype="float32", seed=0))
    return hit.hit


def step_loop(seconds: float = 1.5, batch: int = 256, net: NetworkSpec | None = None, rows: int = 4096,
              steps: int = 10) -> float:
    """Samples/s of plain ``batch``-row training steps for ``seconds``, ``steps`` a round, on ``rows`` random rows.

    Runs on a worker via ``client.run``; ``net`` defaults to this bench's network.
    """
    from nnpipe import blas
    from nnpipe.distributed.trainer import ShardTrainer

    blas.prepare_training_process()
    net = net or SPEC
    rng = np.random.default_rng(0)
    X = rng.standard_normal((rows, net.n_inputs)).astype(np.float32)
    shard = {"X": X, "Y": rng.integers(0, net.n_outputs, rows), "lo": 0}
    trainer = ShardTrainer(net.to_dict(), shard, TrainConfig(batch_size=batch), 0, rows)
    theta = init_params(net, 0)
    trainer.local_round(theta, 5, 1e-3)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        done += trainer.local_round(theta, steps, 1e-3)[2]
    return done / (time.perf_counter() - t0)


def parallel_ceiling(client: Client) -> tuple[float, float]:
    """(one worker alone, both at once summed) samples/s of the same step loop: the most 2 workers can give."""
    workers = sorted(client.scheduler_info()["workers"])
    alone = client.run(step_loop, workers=workers[:1])[workers[0]]
    both = sum(client.run(step_loop, workers=workers[:2]).values())
    return alone, both


class EpochClock:
    """Callback timing epoch ends; the rate between the first and the last is the steady rate.

    Async rounds straddle epoch ends, so one epoch's own samples/s can over- or
    under-count; the span from the first epoch end to the last averages that out
    (and leaves start-up out).
    """

    def __init__(self, n_rows: int):
        self.n_rows, self.times = n_rows, []

    def __call__(self, epoch: int, logs: dict) -> None:
        self.times.append(time.perf_counter())

    def rate(self) -> float:
        return (len(self.times) - 1) * self.n_rows / (self.times[-1] - self.times[0])


def efficiency(rate: float, history: dict) -> float:
    """Throughput over the sum of the trainers' own compute rates: 1.0 means no coordination cost.

    Robust to other load on the machine, which slows both sides alike.
    """
    rates = [float(np.median(v[1:])) for k, v in history.items() if k.startswith("worker/") and len(v) > 1]
    return rate / sum(rates) if rates else float("nan")


def steady_rate(history: dict) -> float:
    """Median samples/s over the epochs after the first (which includes warm-up)."""
    rates = history["train/samples_per_s"]
    return float(np.median(rates[1:] if len(rates) > 1 else rates))


class Reached(Exception):
    """Raised by :class:`TimeTo` to end a run once the target is reached."""


class TimeTo:
    """Callback recording the wall time (from its creation, so start-up counts) when
    validation accuracy first reaches ``target``; then it stops the run."""

    def __init__(self, target: float):
        self.target, self.t0, self.hit = target, time.perf_counter(), None

    def __call__(self, epoch: int, logs: dict) -> None:
        if self.hit is None and logs.get("val/accuracy", 0.0) >= self.target:
            self.hit = (time.perf_counter() - self.t0, epoch + 1)
            raise Reached()

    def run(self, train, *args, **kwargs) -> None:
        try:
            train(*args, callbacks=[self], **kwargs)
        except Reached:
            pass


def fmt_hit(hit) -> str:
    return "not reached" if hit is None else f"{hit[0]:7.1f} s (epoch {hit[1]})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small data, few epochs: a smoke run")
    ap.add_argument("--skip-accuracy", action="store_true", help="skip the time-to-0.9-accuracy runs")
    args = ap.parse_args()
    n_samples = 40_000 if args.quick else 200_000
    epochs = 3
    acc_epochs = 3 if args.quick else 12
    Xtr, ytr, Xva, yva = make_task(n_samples)
    theta0 = init_params(SPEC, 0)
    print(f"task: {len(Xtr)} train x {Xtr.shape[1]} features, net {SPEC.sizes}, "
          f"{SPEC.n_params} params ({theta0.nbytes} bytes float32), Adam; {os.cpu_count()} cores")

    base = dict(optimizer="adam", lr=1e-3, dtype="float32", seed=0)
    single: dict[int, list[float]] = {256: [], 2048: []}
    # The reference runs in its own clean process: this one hosts the Dask client and the
    # local scheduler, whose threads would take the GIL from a training loop run here.
    ref_pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=_ref_init, initargs=(n_samples,))

    def single_rate(batch: int, n_epochs: int) -> float:
        rate = ref_pool.submit(_ref_rate, batch, n_epochs).result()
        single[batch].append(rate)
        return rate

    for batch in (256, 2048):
        print(f"single-process batch {batch:5d}: {single_rate(batch, epochs):10.0f} samples/s")

    runs = [("sync", dict(batch_size=2048), 2048)]
    for K in (50, 10):
        runs += [(mode, dict(batch_size=256, sync_every=K), 256) for mode in ("local-sgd", "async")]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client:
        alone, both = parallel_ceiling(client)
        print(f"\nparallel ceiling now: one worker {alone:.0f} samples/s, two workers at once {both:.0f} "
              f"({both / alone:.2f}x; other load on the machine lowers this)")
        # Each distributed run is paired with a single-process epoch measured just before it,
        # so that load from other processes shifts both sides of a ratio alike.
        print("\nratio: against the single-process epoch measured just before, at the matching batch")
        print(f"{'mode':<10} {'K':>3} {'batch':>6} {'workers':>7} {'samples/s':>11} {'single':>9} {'ratio':>6} "
              f"{'sent/round':>11} {'recv/round':>11} {'budget':>9} {'coord ms/round':>14} {'efficiency':>10}")
        for mode, kw, ref_batch in runs:
            for workers in (1, 2):
                ref = single_rate(ref_batch, 1)
                cfg = TrainConfig(mode=mode, workers=workers, epochs=epochs, **kw, **base)
                clock = EpochClock(len(Xtr))
                r = fit_distributed(Problem(SPEC, theta0, Xtr, ytr), cfg, client=client, callbacks=[clock])
                rate, info = clock.rate(), r.info
                print(f"{mode:<10} {kw.get('sync_every', ''):>3} {kw['batch_size']:>6} {workers:>7} {rate:11.0f} "
                      f"{ref:9.0f} {rate / ref:6.2f} {info['bytes_sent_per_round']:11.0f} "
                      f"{info['bytes_received_per_round']:11.0f} {workers * 2 * theta0.nbytes:9d} "
                      f"{info['coordination_s_per_round'] * 1e3:14.2f} {efficiency(rate, r.history):10.2f}", flush=True)
        spread = {b: (round(min(v)), round(max(v))) for b, v in single.items()}
        print(f"single-process spread over the run (min, max samples/s): {spread}")

        if not args.skip_accuracy:
            print(f"\ntime to 0.9 validation accuracy (at most {acc_epochs} epochs):")
            hit = ref_pool.submit(_ref_time_to, 0.9, acc_epochs).result()
            print(f"  single-process          batch 256 : {fmt_hit(hit)}")
            problem = Problem(SPEC, theta0, Xtr, ytr, (Xva, yva))
            for mode, kw in [("local-sgd", dict(batch_size=256, sync_every=50)),
                             ("async", dict(batch_size=256, sync_every=50)),
                             ("local-sgd", dict(batch_size=256, sync_every=10)),
                             ("sync", dict(batch_size=512))]:
                hit = TimeTo(0.9)
                cfg = TrainConfig(mode=mode, workers=2, epochs=acc_epochs, **kw, **base)
                hit.run(fit_distributed, problem, cfg, client=client)
                K = kw.get("sync_every", "-")
                print(f"  {mode:<9} 2 workers, K={K:<3} batch {kw['batch_size']:<4}: {fmt_hit(hit.hit)}")

    ref_pool.shutdown()
    n_small = 8 * 64 * 20
    with LocalCluster(n_workers=8, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client:
        client.wait_for_workers(8)
        print("\ncoordination overhead per round, 8 workers (one 8-row step per trainer per round;")
        print("median over rounds of the round's wall time minus its slowest compute):")
        for mode, kw in [("sync", dict(batch_size=64)), ("local-sgd", dict(batch_size=8, sync_every=1)),
                         ("async", dict(batch_size=8, sync_every=1))]:
            cfg = TrainConfig(mode=mode, workers=8, epochs=2, **kw, **base)
            r = fit_distributed(Problem(SPEC, theta0, Xtr[:n_small], ytr[:n_small]), cfg, client=client)
            print(f"  {mode:<9}: {r.info['coordination_s_per_round'] * 1e3:6.2f} ms "
                  f"({r.info['rounds']} rounds; {r.info['bytes_sent_per_round'] / 1e6:.2f} MB sent, "
                  f"{r.info['bytes_received_per_round'] / 1e6:.2f} MB received per round)")


if __name__ == "__main__":
    main()
