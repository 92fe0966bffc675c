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
  optimizer switched the other way (``outer=...``), and with the settings
  before the outer optimizer, lr scaling and staleness scaling existed
  (``old``: ``outer_optimizer=none``, ``lr_scaling=none``,
  ``lr_warmup_epochs=0``, ``staleness_policy=downweight``).

Columns: median test accuracy over the seeds, its gap to sync in points,
and the median epoch at which the test accuracy first reached 95% of that
seed's final sync accuracy.

    .venv/bin/python bench/bench_convergence.py                    # 2, 4, 8, 16 workers, 3 seeds
    .venv/bin/python bench/bench_convergence.py --workers 2,8 --seeds 1 --modes async
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import numpy as np
from sklearn.datasets import load_digits

from nnpipe.config import TrainConfig
from nnpipe.distributed import fit_distributed, start_local_cluster
from nnpipe.network import NetworkSpec, init_params
from nnpipe.training import fit

OLD = dict(outer_optimizer="none", lr_scaling="none", lr_warmup_epochs=0, staleness_policy="downweight")
VARIANTS = {
    "local-sgd": {"default": {}, "outer=none": dict(outer_optimizer="none"), "old": OLD},
    "async": {"default": {}, "outer=none": dict(outer_optimizer="none"), "old": OLD},
}


def digits(seed: int):
    d = load_digits()
    idx = np.random.default_rng(seed).permutation(len(d.target))
    X, y = d.data[idx], d.target[idx]
    n = int(0.8 * len(y))
    mean, std = X[:n].mean(0), X[:n].std(0) + 1e-8
    return (X[:n] - mean) / std, y[:n], (X[n:] - mean) / std, y[n:]


def first_epoch_at(curve: list[float], level: float) -> float:
    hit = [i + 1 for i, a in enumerate(curve) if a >= level]
    return float(hit[0]) if hit else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="2,4,8,16")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--modes", default="local-sgd,async", help="subset of local-sgd,async")
    args = ap.parse_args()
    logging.getLogger("distributed").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    seeds = list(range(args.seeds))
    spec = NetworkSpec(64, (64,), ("relu",), 10, dtype="float32")
    base = dict(epochs=args.epochs, batch_size=32, dtype="float32")
    data = {s: digits(s) for s in seeds}

    sync_curves = {}
    for s in seeds:
        Xtr, ytr, Xte, yte = data[s]
        sync_curves[s] = fit(spec, init_params(spec, s), Xtr, ytr, TrainConfig(seed=s, **base),
                             validation=(Xte, yte)).history["val/accuracy"]
    sync_med = float(np.median([c[-1] for c in sync_curves.values()]))
    sync_ep = float(np.median([first_epoch_at(c, 0.95 * c[-1]) for c in sync_curves.values()]))

    print(f"digits, {args.epochs} epochs, seeds {seeds}, Adam lr 1e-3, batch 32, 64-64-10 relu")
    print(f"{'workers':>7} | {'mode':<10} | {'settings':<15} | {'median acc':>10} | {'gap to sync':>11} | "
          f"{'epochs to 95%':>13} | {'all seeds':<22}")
    for n in [int(w) for w in args.workers.split(",")]:
        t0 = time.perf_counter()
        print(f"{n:>7} | {'sync':<10} | {'(= single)':<15} | {sync_med:>10.4f} | {0.0:>+11.2f} | {sync_ep:>13.0f} | "
              + " ".join(f"{c[-1]:.4f}" for c in sync_curves.values()), flush=True)
        cluster = start_local_cluster(n)
        try:
            from distributed import Client

            with Client(cluster) as client:
                client.wait_for_workers(n, timeout=300)
                for mode, variants in VARIANTS.items():
                    if mode not in args.modes.split(","):
                        continue
                    for name, extra in variants.items():
                        finals, epochs = [], []
                        for s in seeds:
                            Xtr, ytr, Xte, yte = data[s]
                            cfg = TrainConfig(mode=mode, workers=n, seed=s, **base, **extra)
                            out = fit_distributed(spec, init_params(spec, s), Xtr, ytr, cfg, validation=(Xte, yte),
                                                  client=client)
                            curve = out.history["val/accuracy"]
                            finals.append(curve[-1])
                            epochs.append(first_epoch_at(curve, 0.95 * sync_curves[s][-1]))
                        med = float(np.median(finals))
                        print(f"{n:>7} | {mode:<10} | {name:<15} | {med:>10.4f} | {100 * (med - sync_med):>+11.2f} | "
                              f"{np.median(epochs):>13.0f} | " + " ".join(f"{a:.4f}" for a in finals), flush=True)
        finally:
            cluster.close()
        print(f"        ({n} workers: {time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
