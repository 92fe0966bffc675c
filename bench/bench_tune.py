"""Tuning on digits: TPE + median pruning vs random search without pruning vs the grid sweep.

Every method gets the same number of trials on the same space (learning rate
log 1e-4..1e-1, one hidden layer of width 16..256, optimizer adam or sgd), the
same epoch budget with the pipeline's early stopping, the same data and the
same 2-worker local cluster; each runs with ``--parallel 2`` and
``--parallel 1``. Printed: best validation accuracy, the best trial's test
accuracy, epochs trained, the trials' wall time (first submitted to last
finished) and the whole call's.

Trials last seconds, as in a real study, not the 0.1 s a digits training
takes: the training part is nudged as in scikit-learn's RBM example (each
image also shifted by one pixel up, down, left and right: 5x the rows; the
scaler is fitted on that part only; validation and test rows stay original
images), and trials use mini-batches of 8. The validation split is 20% of the
rows (360; one row = 0.28 points). All of this applies to every method alike.

The reference, measured in the same invocation before and after the studies:
8 plain trainings of the same data as bare Dask tasks (no Optuna, MLflow or
pruning), one at a time vs two at a time on the same cluster, which is what
the machine gives a second worker at that moment. Each method's parallel
speed-up is printed next to it.

    flock /work/cpu.lock .venv/bin/python bench/bench_tune.py --methods tpe --save /tmp/tune.jsonl
    flock /work/cpu.lock .venv/bin/python bench/bench_tune.py --methods random --save /tmp/tune.jsonl
    flock /work/cpu.lock .venv/bin/python bench/bench_tune.py --methods grid --save /tmp/tune.jsonl  # + the table

(one method per invocation keeps each under ~5 minutes of the shared lock;
``--save`` appends the rows and every invocation prints the table of all rows
saved so far.) Quick look: ``--trials 8 --epochs 30 --parallel 2 --no-nudge``.

Targets (issue 12): TPE+pruning within 0.5 points of the grid's best, at most
50% of random search's epochs, and --parallel 2 at least 1.5x faster than 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# The grid: 5 learning rates x 3 widths x 2 optimizers = 30 points (the default trial count).
GRID = ["lr=0.0003,0.001,0.003,0.01,0.03", "hidden=32;64;128", "optimizer=adam,sgd"]
SPACE = ["lr=loguniform(1e-4,1e-1)", "hidden=int(16,256,log)", "optimizer=choice(adam,sgd)"]
METHODS = {"tpe": ("tpe + median pruner", SPACE, "tpe", "median"),
           "random": ("random, no pruning", SPACE, "random", "none"),
           "grid": ("grid sweep", GRID, "grid", "none")}


def nudge(X: np.ndarray) -> np.ndarray:
    """``X`` (n, 64) of 8x8 images, then the same shifted one pixel down, up, right, left (zero fill): (5n, 64)."""
    images = X.reshape(-1, 8, 8)
    out = [images]
    for axis, shift in ((1, 1), (1, -1), (2, 1), (2, -1)):
        moved = np.roll(images, shift, axis=axis)
        edge = [slice(None)] * 3
        edge[axis] = 0 if shift == 1 else -1
        moved[tuple(edge)] = 0
        out.append(moved)
    return np.concatenate(out).reshape(-1, X.shape[1])


def bench_splits(val_size: float, seed: int, augment: bool):
    """Digits split 60/20/20; with ``augment`` the training part nudged (5x) and the scaler refitted on it."""
    from nnpipe.data import load_dataset, split_and_scale

    s = split_and_scale(load_dataset("digits"), test_size=0.2, val_size=val_size, seed=seed)
    if not augment:
        return s
    raw = lambda X: X * s.scale + s.mean  # noqa: E731  (the pixels back: 0..16)
    train = nudge(raw(s.X_train))
    mean, scale = train.mean(axis=0), train.std(axis=0)
    scale[scale == 0] = 1.0
    return dataclasses.replace(s, X_train=(train - mean) / scale, y_train=np.tile(s.y_train, 5),
                               X_val=(raw(s.X_val) - mean) / scale, X_test=(raw(s.X_test) - mean) / scale,
                               mean=mean, scale=scale)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=30, help="trials per method (the grid has 30 points)")
    ap.add_argument("--epochs", type=int, default=100, help="epoch budget per trial (early stopping, --patience)")
    ap.add_argument("--patience", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--val-size", type=float, default=0.2, help="validation fraction (every method)")
    ap.add_argument("--no-nudge", action="store_true", help="train on digits as is (trials of ~0.1 s)")
    ap.add_argument("--methods", default="tpe,random,grid", help="comma-separated: tpe, random, grid")
    ap.add_argument("--parallel", default="2,1", help="comma-separated --parallel values to run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", type=Path, help="append the rows to this JSON-lines file and print all of its rows")
    args = ap.parse_args()

    import logging

    import optuna

    from nnpipe.config import TrainConfig
    from nnpipe.distributed.cluster import connect
    from nnpipe.tuning import tune

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    splits = bench_splits(args.val_size, args.seed, not args.no_nudge)
    train = TrainConfig(epochs=args.epochs, patience=args.patience, batch_size=args.batch_size, seed=args.seed)
    setup = {"trials": args.trials, "epochs": args.epochs, "patience": args.patience, "batch_size": args.batch_size,
             "val_rows": len(splits.y_val), "train_rows": len(splits.y_train), "seed": args.seed}
    print(f"setup: {setup}", flush=True)
    methods = [METHODS[m.strip()] for m in args.methods.split(",") if m.strip()]
    parallels = [int(p) for p in args.parallel.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp, connect(workers=2) as client:
        client.wait_for_workers(2)
        uri = f"sqlite:///{tmp}/mlflow.db"
        # Warm up: workers import optuna and the core once, the store creates its tables once.
        tune(splits, ["lr=choice(0.01)"], trials=1, pruner="none", sampler="random", study="warmup", client=client,
             train=TrainConfig(epochs=2), hidden=[16], dataset_name="digits", tracking_uri=uri, model_name="warmup")
        references = [reference(client, splits, train)]
        # Interleaved (each method at every --parallel in turn), because a shared machine's speed drifts.
        for label, space, sampler, pruner in methods:
            for parallel in parallels:
                t0 = time.perf_counter()
                r = tune(splits, space, trials=args.trials, sampler=sampler, pruner=pruner, parallel=parallel,
                         seed=args.seed, study=f"{sampler}-{pruner}-p{parallel}", train=train, hidden=[64],
                         client=client, dataset_name="digits", tracking_uri=uri, model_name="bench-tune")
                wall = time.perf_counter() - t0
                c = r.counts()
                alone = one_running_s(r) if parallel == 2 else None
                rows.append({"method": label, "parallel": parallel, "complete": c["COMPLETE"], "pruned": c["PRUNED"],
                             "failed": c["FAIL"], "best_val": r.best["value"], "best_test": client_metric(r),
                             "epochs": r.epochs_trained, "trials_s": r.trials_s, "wall_s": wall,
                             "best": r.best["params"], "setup": setup, "one_running_s": alone})
                print(f"done: {label} --parallel {parallel}: best val {r.best['value']:.4f}, "
                      f"{r.epochs_trained} epochs, trials {r.trials_s:.1f} s ({r.trials_s / args.trials:.2f} s "
                      f"a trial), call {wall:.1f} s" + ("" if alone is None else
                                                        f"; {alone:.1f} s of it with one trial running"), flush=True)
        references.append(reference(client, splits, train))
    ref = {"reference": references}
    for row in rows:
        row.update(ref)
    if args.save:
        with args.save.open("a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        rows = [json.loads(line) for line in args.save.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if r.get("setup") == setup]  # only rows of this same setup are compared
    table(rows, setup)


def table(rows: list[dict], setup: dict) -> None:
    print(f"\ndigits ({setup['train_rows']} training rows, {setup['val_rows']} validation rows), "
          f"{setup['trials']} trials per method, {setup['epochs']}-epoch budget (patience {setup['patience']}), "
          f"batch {setup['batch_size']}, 2 workers\n")
    print("| method | --parallel | complete / pruned / failed | best val acc | its test acc | epochs trained "
          "| trials wall s | call wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['parallel']} | {r['complete']} / {r['pruned']} / {r['failed']} | "
              f"{r['best_val']:.4f} | {r['best_test']:.4f} | {r['epochs']} | {r['trials_s']:.1f} | {r['wall_s']:.1f} |")
    by = {(r["method"], r["parallel"]): r for r in rows}
    tpe, rnd, grid = (by.get((METHODS[m][0], 2)) for m in ("tpe", "random", "grid"))
    print()
    if tpe and grid:
        print(f"TPE+pruning best val - grid best val: {100 * (tpe['best_val'] - grid['best_val']):+.2f} points "
              f"(target >= -0.5; one validation row is {100 / setup['val_rows']:.2f} points)")
    if tpe and rnd:
        print(f"TPE+pruning epochs / random epochs: {tpe['epochs'] / rnd['epochs']:.2f} (target <= 0.50)")
    for label, *_ in METHODS.values():
        one, two = by.get((label, 1)), by.get((label, 2))
        if one and two:
            refs = ", ".join(f"{x:.2f}x" for x in two["reference"])
            rate = (two["epochs"] / two["trials_s"]) / (one["epochs"] / one["trials_s"])
            if two.get("one_running_s") is not None:
                print(f"{label}: --parallel 2 ran one trial alone for {two['one_running_s']:.1f} s of "
                      f"{two['trials_s']:.1f} s (the other worker idle)")
            print(f"{label}: --parallel 1 / --parallel 2 trials' wall time {one['trials_s'] / two['trials_s']:.2f}x "
                  f"(whole call {one['wall_s'] / two['wall_s']:.2f}x; epochs per second {rate:.2f}x; target >= 1.5x); "
                  f"reference in the same invocation, before and after: {refs}")
    print("(TPE with pruning is not the same study at --parallel 1 and 2: what the sampler and the pruner "
          "have seen when a trial starts depends on the order trials finish, so its epochs differ; epochs per "
          "second compares the work done)")
    for r in rows:
        if r["parallel"] == 2:
            print(f"best of {r['method']}: {r['best']}")


def reference(client, splits, train) -> float:
    """One at a time / two at a time wall time of :func:`raw_trainings`: what two workers give right now."""
    one, two = raw_trainings(client, splits, 1, train), raw_trainings(client, splits, 2, train)
    print(f"reference: 8 plain trainings as Dask tasks: one at a time {one:.1f} s, two at a time {two:.1f} s "
          f"({one / two:.2f}x)", flush=True)
    return one / two


def raw_trainings(client, splits, parallel: int, train) -> float:
    """Wall time of 8 trainings (4 learning rates x 2 optimizers, width 64) as bare Dask tasks, ``parallel`` at a time.

    The ceiling of trial-level parallelism on this machine at this moment (other load included),
    without the study's storage, MLflow or pruning.
    """
    import nnpipe
    from nnpipe.distributed.jobs import place, wait_first

    data = place(client, splits, "bench-data")
    configs = [dataclasses.replace(train, lr=lr, optimizer=opt)
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


def one_running_s(result) -> float:
    """Seconds of the study during which exactly one trial ran (a worker idle: the last trial's tail, refills)."""
    import optuna

    from nnpipe.tuning.study import get_storage

    study = optuna.load_study(study_name=result.study, storage=get_storage(result.storage))
    events = sorted([(t.datetime_start, 1) for t in study.trials if t.datetime_start and t.datetime_complete]
                    + [(t.datetime_complete, -1) for t in study.trials if t.datetime_start and t.datetime_complete])
    alone, running, last = 0.0, 0, None
    for when, step in events:
        if running == 1 and last is not None:
            alone += (when - last).total_seconds()
        running, last = running + step, when
    return alone


def client_metric(result, key: str = "test/accuracy") -> float:
    """A metric of the best trial's MLflow run."""
    from nnpipe import tracking

    return float(tracking.client().get_run(result.best["run_id"]).data.metrics.get(key, float("nan")))


if __name__ == "__main__":
    main()
