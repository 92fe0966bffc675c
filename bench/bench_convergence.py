"""Accuracy as workers are added: local SGD and async against sync, with and without the outer optimizer.

Digits (1,437 training rows after an 80/20 split, standardised), a 64-64-10
relu network, Adam lr 1e-3, batch 32 (per worker in local-sgd and async), 40
epochs for every mode, seeds 0-2. For each worker count a LocalCluster of
that many single-threaded worker *processes* is started (they oversubscribe
this machine's 2 cores: accuracy is what is measured here, not speed).

Rows printed per worker count:

- ``sync``: single-process training, which ``sync`` equals up to rounding
  (tests/distributed/test_sync.py) at a fraction of the cost: ``sync`` at
  batch 32 with 16 workers gives each worker 2 rows per step;
- ``local-sgd`` / ``async`` with the defaults (``default``), with the outer
  optimizer switched the other way (``other``: ``none`` for local-sgd,
  ``nesterov`` for async), with the defaults before the warm-up was chosen
  for time to accuracy (``prev``: no sync warm-up, a 5-epoch lr ramp,
  Nesterov), and with the settings before the outer optimizer, lr scaling
  and staleness scaling existed (``old``: ``outer_optimizer=none``,
  ``lr_scaling=none``, no warm-ups, ``staleness_policy=downweight``);
- ``local-sgd`` only, asked for by name (``--variants default,overlap1,overlap2``):
  overlapped rounds, ``overlap=1`` (``overlap1``) and ``overlap=2``
  (``overlap2``), the defaults otherwise (docs/speed.md, "Overlapped rounds").
  At the default ``sync_every=10`` a shard of 8 or more workers (at most 180
  rows, 6 local steps) is one round an epoch, and every epoch ends with all
  its rounds merged, so overlap changes nothing there; ``--sync-every 1``
  gives every worker count several rounds an epoch (3 at 16 workers).

Columns: median test accuracy over the seeds, its gap to sync in points,
and the epochs to 95% of that seed's final sync accuracy, twice: the first
evaluated epoch at or above it (the test set is scored once per epoch, so
this is a whole number), and the crossing interpolated linearly between the
two epochs around it (finer than one epoch; on a noisy curve, the first
crossing). Both are medians over the seeds.

What an epoch is: one pass over the training rows in every mode. ``sync``
(single) takes 45 steps of 32 rows per epoch; ``local-sgd`` one pass of every
shard (``ceil(shard rows / 32)`` local steps per worker, in rounds of K); a
warm-up epoch one pass in sync steps of ``32 x workers`` rows; ``async`` ends
an epoch when merged results have covered as many rows as the training set.
So the modes see the same data per epoch, not the same number of sequential
steps.

``--teacher`` runs the 1M-row teacher task of ``bench/bench_scale.py``
instead (its Parquet writer, reused): partitioned Parquet read on the
workers, 40 features, labels from a fixed random 40-32-10 network, a
64-32-10 relu network, Adam lr 1e-3, 256 rows per step (per worker in
local-sgd and async, global in sync), K=10, one seed; ``sync`` there is the
same source trained in one process (``single``), its accuracy on the test
split computed where the rows are.

    .venv/bin/python bench/bench_convergence.py                    # 2, 4, 8, 16 workers, 3 seeds
    .venv/bin/python bench/bench_convergence.py --workers 2,8 --seeds 1 --modes async --variants default
    .venv/bin/python bench/bench_convergence.py --teacher --workers 2,4 --epochs 4
    .venv/bin/python bench/bench_convergence.py --workers 2,8,16 --modes local-sgd --variants default,overlap1,overlap2
    .venv/bin/python bench/bench_convergence.py --workers 2,8,16 --modes local-sgd --variants ... --sync-every 1
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from nnpipe.config import TrainConfig
from nnpipe.core.network import NetworkSpec, init_params
from nnpipe.core.problem import Problem
from nnpipe.core.training import fit
from nnpipe.distributed import fit_distributed, start_local_cluster

OLD = dict(outer_optimizer="none", lr_scaling="none", lr_warmup_epochs=0, warmup_epochs=0,
           staleness_policy="downweight")
# The defaults before time to accuracy was measured (issue 13, second pass).
PREV = dict(lr_warmup_epochs=5, warmup_epochs=0, outer_optimizer="nesterov")
# "other": the default with the outer optimizer switched the other way.
# "overlap1"/"overlap2": local-sgd's overlapped rounds (overlap is local-sgd only, so async has none).
VARIANTS = {
    "local-sgd": {"default": {}, "other": dict(outer_optimizer="none"), "prev": PREV, "old": OLD,
                  "overlap1": {"overlap": 1}, "overlap2": {"overlap": 2}},
    "async": {"default": {}, "other": dict(outer_optimizer="nesterov"), "prev": PREV, "old": OLD},
}
# What runs without --variants: the four every mode has, as before the overlap variants were added.
DEFAULT_VARIANTS = "default,other,prev,old"


def digits(seed: int):
    d = load_digits()
    idx = np.random.default_rng(seed).permutation(len(d.target))
    X, y = d.data[idx], d.target[idx]
    n = int(0.8 * len(y))
    mean, std = X[:n].mean(0), X[:n].std(0) + 1e-8
    return (X[:n] - mean) / std, y[:n], (X[n:] - mean) / std, y[n:]


def first_epoch_at(curve: list[float], level: float) -> float:
    """The first epoch (1-based) whose score is at least ``level``; NaN if none."""
    hit = [i + 1 for i, a in enumerate(curve) if a >= level]
    return float(hit[0]) if hit else float("nan")


def crossing_at(curve: list[float], level: float) -> float:
    """Where the curve first reaches ``level``, interpolated between the epochs around it (epoch 0 scores 0)."""
    prev = 0.0
    for i, a in enumerate(curve):
        if a >= level:
            return i + (level - prev) / (a - prev)
        prev = a
    return float("nan")


def row(n: int, mode: str, name: str, finals: list[float], curves: list[list[float]], levels: list[float],
        ref: float) -> str:
    med = float(np.median(finals))
    ep = np.median([first_epoch_at(c, lv) for c, lv in zip(curves, levels)])
    frac = np.median([crossing_at(c, lv) for c, lv in zip(curves, levels)])
    return (f"{n:>7} | {mode:<10} | {name:<15} | {med:>10.4f} | {100 * (med - ref):>+11.2f} | {ep:>6.0f} ({frac:5.2f}) | "
            + " ".join(f"{a:.4f}" for a in finals))


def selected(args: argparse.Namespace):
    """``(mode, variant name, config overrides)`` for the modes and variants asked for."""
    for mode, variants in VARIANTS.items():
        if mode in args.modes.split(","):
            for name, extra in variants.items():
                if name in args.variants.split(","):
                    yield mode, name, extra


HEADER = (f"{'workers':>7} | {'mode':<10} | {'settings':<15} | {'median acc':>10} | {'gap to sync':>11} | "
          f"{'epochs to 95%':>14} | all seeds")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="2,4,8,16")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--modes", default="local-sgd,async", help="subset of local-sgd,async")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS,
                    help=f"subset of {','.join(VARIANTS['local-sgd'])} (overlap1,overlap2: local-sgd only; "
                         f"default {DEFAULT_VARIANTS})")
    ap.add_argument("--sync-every", type=int, default=None,
                    help="digits, local-sgd and async: local steps per round (default: TrainConfig's, 10)")
    ap.add_argument("--teacher", action="store_true", help="the 1M-row teacher task instead of digits (heavy)")
    ap.add_argument("--rows", type=int, default=1_000_000, help="--teacher: rows of the Parquet dataset")
    ap.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "nnpipe-bench-scale"),
                    help="--teacher: where the dataset is written once (shared with bench_scale.py)")
    args = ap.parse_args()
    logging.getLogger("distributed").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    if args.teacher:
        return teacher(args)
    seeds = list(range(args.seeds))
    spec = NetworkSpec(64, (64,), ("relu",), 10, dtype="float32")
    base = dict(epochs=args.epochs, batch_size=32, dtype="float32")
    dist = {} if args.sync_every is None else {"sync_every": args.sync_every}  # not for fit(): single has no rounds
    data = {s: digits(s) for s in seeds}

    sync_curves, problems = {}, {}
    for s in seeds:
        Xtr, ytr, Xte, yte = data[s]
        problems[s] = Problem(spec, init_params(spec, s), Xtr, ytr, (Xte, yte))
        sync_curves[s] = fit(problems[s], TrainConfig(seed=s, **base)).history["val/accuracy"]
    sync_med = float(np.median([c[-1] for c in sync_curves.values()]))
    levels = [0.95 * sync_curves[s][-1] for s in seeds]

    k = TrainConfig().sync_every if args.sync_every is None else args.sync_every
    print(f"digits, {args.epochs} epochs, seeds {seeds}, Adam lr 1e-3, batch 32, 64-64-10 relu, sync_every {k}")
    print(HEADER)
    for n in [int(w) for w in args.workers.split(",")]:
        t0 = time.perf_counter()
        print(row(n, "sync", "(= single)", [c[-1] for c in sync_curves.values()], list(sync_curves.values()),
                  levels, sync_med), flush=True)
        cluster = start_local_cluster(n)
        try:
            from distributed import Client

            with Client(cluster) as client:
                client.wait_for_workers(n, timeout=300)
                for mode, name, extra in selected(args):
                    curves = []
                    for s in seeds:
                        cfg = TrainConfig(mode=mode, workers=n, seed=s, **base, **dist, **extra)
                        out = fit_distributed(problems[s], cfg, client=client)
                        curves.append(out.history["val/accuracy"])
                    print(row(n, mode, name, [c[-1] for c in curves], curves, levels, sync_med), flush=True)
        finally:
            cluster.close()
        print(f"        ({n} workers: {time.perf_counter() - t0:.0f} s)", flush=True)


def teacher(args: argparse.Namespace) -> None:
    """The teacher task (bench_scale.py's dataset): sync (= single) vs local-sgd vs async, one seed."""
    from distributed import Client

    import nnpipe
    from nnpipe.distributed.frames import cluster_runner
    from nnpipe.sources import open_source
    from nnpipe.sources.evaluate import evaluate
    from nnpipe.sources.prep import TEST, prepare

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_scale import write_dataset  # one writer for both benches

    t0 = time.perf_counter()
    folder = write_dataset(Path(args.root), args.rows)
    print(f"data: {args.rows:,} rows x 40 at {folder} ({time.perf_counter() - t0:.0f} s)", flush=True)
    source = open_source(str(folder), "label")
    base = dict(epochs=args.epochs, batch_size=256, dtype="float32", seed=0)
    hidden = (64, 32)
    print(f"teacher task, {args.rows:,} rows, {args.epochs} epochs, seed 0, Adam lr 1e-3, batch 256, K=10, "
          f"64-32-10 relu; accuracy on the test split, epochs to 95% on the validation split")
    print(HEADER)
    sync = None
    for n in [int(w) for w in args.workers.split(",")]:
        t1 = time.perf_counter()
        cluster = start_local_cluster(n)
        try:
            with Client(cluster) as client:
                client.wait_for_workers(n, timeout=300)
                run = cluster_runner(client)
                prepared = prepare(source, run, seed=0)

                def test_acc(result) -> float:
                    return evaluate(prepared, result.model.spec, result.model.theta, TEST, run)[0]["accuracy"]

                if sync is None:  # one process, the same split: what sync equals up to rounding
                    ref = nnpipe.train(prepared, TrainConfig(mode="single", **base), hidden=hidden)
                    sync = (test_acc(ref), ref.history["val/accuracy"])
                    print(f"        (sync = single: {time.perf_counter() - t1:.0f} s)", flush=True)
                level = [0.95 * sync[1][-1]]
                print(row(n, "sync", "(= single)", [sync[0]], [sync[1]], level, sync[0]), flush=True)
                for mode, name, extra in selected(args):
                    t2 = time.perf_counter()
                    out = nnpipe.train(prepared, TrainConfig(mode=mode, workers=n, **base, **extra),
                                       hidden=hidden, client=client)
                    print(row(n, mode, name, [test_acc(out)], [out.history["val/accuracy"]], level, sync[0])
                          + f"  ({time.perf_counter() - t2:.0f} s)", flush=True)
        finally:
            cluster.close()
        print(f"        ({n} workers: {time.perf_counter() - t1:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
