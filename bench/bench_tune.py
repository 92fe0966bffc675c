"""Tuning on digits: TPE + median pruning vs random search without pruning vs the grid sweep.

Every method gets the same number of trials on the same space (learning rate
log 1e-4..1e-1, one hidden layer of width 16..256, optimizer adam or sgd), the
same epoch budget with the pipeline's early stopping, and the same 2-worker
local cluster; each runs with ``--parallel 2`` and ``--parallel 1``. Printed:
best validation accuracy, the best trial's test accuracy, epochs trained, the
trials' wall time (first submitted to last finished) and the whole call's.

    .venv/bin/python bench/bench_tune.py                 # 20 trials, 60 epochs
    .venv/bin/python bench/bench_tune.py --trials 8 --epochs 40 --no-serial

Targets (issue 12): TPE+pruning within 0.5 points of the grid's best, at most
50% of random search's epochs, and --parallel 2 at least 1.5x faster than 1.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# The grid: 5 learning rates x 2 widths x 2 optimizers = 20 points (the default trial count).
GRID = ["lr=0.0003,0.001,0.003,0.01,0.03", "hidden=32;128", "optimizer=adam,sgd"]
SPACE = ["lr=loguniform(1e-4,1e-1)", "hidden=int(16,256,log)", "optimizer=choice(adam,sgd)"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20, help="trials per method (the grid has 20 points)")
    ap.add_argument("--epochs", type=int, default=60, help="epoch budget per trial (early stopping, patience 10)")
    ap.add_argument("--no-serial", action="store_true", help="skip the --parallel 1 runs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import logging

    import optuna

    from nnpipe.config import TrainConfig
    from nnpipe.data import load_dataset, split_and_scale
    from nnpipe.distributed.cluster import connect
    from nnpipe.tuning import tune

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    splits = split_and_scale(load_dataset("digits"), test_size=0.2, val_size=0.1, seed=args.seed)
    train = TrainConfig(epochs=args.epochs, patience=10, seed=args.seed)
    methods = [("tpe + median pruner", SPACE, "tpe", "median"),
               ("random, no pruning", SPACE, "random", "none"),
               ("grid sweep", GRID, "grid", "none")]
    parallels = [2] if args.no_serial else [2, 1]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp, connect(workers=2) as client:
        client.wait_for_workers(2)
        uri = f"sqlite:///{tmp}/mlflow.db"
        # Warm up: workers import optuna and the core once, the store creates its tables once.
        tune(splits, ["lr=choice(0.01)"], trials=1, pruner="none", sampler="random", study="warmup", client=client,
             train=TrainConfig(epochs=2), hidden=[16], dataset_name="digits", tracking_uri=uri, model_name="warmup")
        ceilings = [ceiling(client, splits, args.epochs, args.seed)]
        # Interleaved (each method at --parallel 2 then 1), because a shared machine's speed drifts.
        for label, space, sampler, pruner in methods:
            for parallel in parallels:
                t0 = time.perf_counter()
                r = tune(splits, space, trials=args.trials, sampler=sampler, pruner=pruner, parallel=parallel,
                         seed=args.seed, study=f"{sampler}-{pruner}-p{parallel}", train=train, hidden=[64],
                         client=client, dataset_name="digits", tracking_uri=uri, model_name="bench-tune")
                wall = time.perf_counter() - t0
                test = client_metric(r, "test/accuracy")
                c = r.counts()
                rows.append({"method": label, "parallel": parallel, "complete": c["COMPLETE"], "pruned": c["PRUNED"],
                             "failed": c["FAIL"], "best_val": r.best["value"], "best_test": test,
                             "epochs": r.epochs_trained, "trials_s": r.trials_s, "wall_s": wall,
                             "best": r.best["params"]})
                print(f"done: {label} --parallel {parallel}: best val {r.best['value']:.4f}, "
                      f"{r.epochs_trained} epochs, {r.trials_s:.1f} s", flush=True)
        ceilings.append(ceiling(client, splits, args.epochs, args.seed))

    print(f"\ndigits, {args.trials} trials per method, {args.epochs}-epoch budget (patience 10), 2 workers\n")
    print("| method | --parallel | complete / pruned / failed | best val acc | its test acc | epochs trained "
          "| trials wall s | call wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['parallel']} | {r['complete']} / {r['pruned']} / {r['failed']} | "
              f"{r['best_val']:.4f} | {r['best_test']:.4f} | {r['epochs']} | {r['trials_s']:.1f} | {r['wall_s']:.1f} |")
    by = {(r["method"], r["parallel"]): r for r in rows}
    tpe, rnd, grid = (by[(m[0], 2)] for m in methods)
    print()
    print(f"TPE+pruning best val - grid best val: {100 * (tpe['best_val'] - grid['best_val']):+.2f} points "
          f"(target >= -0.5)")
    print(f"TPE+pruning epochs / random epochs: {tpe['epochs'] / rnd['epochs']:.2f} (target <= 0.50)")
    if 1 in parallels:
        for label, *_ in methods:
            one, two = by[(label, 1)], by[(label, 2)]
            print(f"{label}: --parallel 1 / --parallel 2 trial wall time: {one['trials_s'] / two['trials_s']:.2f}x "
                  f"(call: {one['wall_s'] / two['wall_s']:.2f}x; target >= 1.5x)")
    print("reference (this machine, before and after): 8 plain trainings as Dask tasks, no Optuna or MLflow, "
          "--parallel 1 / --parallel 2: " + ", ".join(f"{c:.2f}x" for c in ceilings))
    print("(TPE with pruning is not the same study at --parallel 1 and 2: what the sampler and the pruner "
          "have seen when a trial starts depends on the order trials finish)")
    for r in rows:
        if r["parallel"] == 2:
            print(f"best of {r['method']}: {r['best']}")


def ceiling(client, splits, epochs: int, seed: int) -> float:
    """--parallel 1 / --parallel 2 wall time of :func:`raw_trainings`: what two workers can give right now."""
    one, two = raw_trainings(client, splits, 1, epochs, seed), raw_trainings(client, splits, 2, epochs, seed)
    print(f"reference: 8 plain trainings: --parallel 1 {one:.1f} s, --parallel 2 {two:.1f} s ({one / two:.2f}x)",
          flush=True)
    return one / two


def raw_trainings(client, splits, parallel: int, epochs: int, seed: int) -> float:
    """Wall time of 8 trainings (4 learning rates x 2 optimizers) as bare Dask tasks, ``parallel`` at a time.

    The ceiling of trial-level parallelism on this machine at this moment (other load included),
    without the study's storage, MLflow or pruning.
    """
    import nnpipe
    from nnpipe.config import TrainConfig
    from nnpipe.distributed.jobs import place, wait_first

    data = place(client, splits, "bench-data")
    configs = [TrainConfig(epochs=epochs, patience=10, seed=seed, lr=lr, optimizer=opt)
               for lr in (0.0003, 0.001, 0.003, 0.01) for opt in ("adam", "sgd")]
    data.result()
    t0 = time.perf_counter()
    pending = set()
    while configs or pending:
        while configs and len(pending) < parallel:
            pending.add(client.submit(nnpipe.train, data, configs.pop(0), hidden=(64,), pure=False))
        for f in wait_first(pending):
            pending.discard(f)
            f.result()
    return time.perf_counter() - t0


def client_metric(result, key: str) -> float:
    """A metric of the best trial's MLflow run."""
    from nnpipe import tracking

    return float(tracking.client().get_run(result.best["run_id"]).data.metrics.get(key, float("nan")))


if __name__ == "__main__":
    main()
