"""``nnpipe train`` on a partitioned Parquet source of N rows: driver and worker memory, speed, accuracy.

Data: N rows x 40 float32 features (standard normal), labels from a fixed
random teacher network (40-32-10 tanh, argmax; seed 1234), so the task is
learnable and the same at every N. Written once per N as Parquet parts of
250k rows (row groups of 64k) under ``--root``; ``--part-rows`` and
``--group-rows`` write other layouts (``--part-rows 1250000 --group-rows 0``:
10M rows in 8 parts of pyarrow's default row groups, as a user's writer may leave them).

Each configuration runs ``nnpipe train --dataset DIR --target label ...`` as
a subprocess on a scratch MLflow store, exactly as a user would, and the
bench samples every 0.2 s the resident memory (VmRSS from ``/proc``) of that
process (the driver) and of each of its descendants (the Dask worker
processes the run starts). It prints, per run: wall time of the command,
training samples/s (mean of ``train/samples_per_s`` over epochs), test
accuracy, the data path and round size the run chose, driver peak RSS and
the largest worker peak RSS, next to the issue's targets.

Streamed runs decode each piece once (the first epoch) and read the decoded
pieces from the workers' local disk afterwards, so the bench also prints the
mean rate from the second epoch on, the figure the streaming target is about,
and one streamed run with ``--no-stream-cache`` (decoding every pass) beside it.

The reference is ``--mode single`` on the same source at 1M: the training
rows in memory in one process (the same hash split), at the batch size the
distributed runs choose per step (256), with BLAS threads as a user gets
them: no thread variable set, so nnpipe decides (one thread for this
network, :mod:`nnpipe.blas`). A second single run sets
``OPENBLAS_NUM_THREADS=2`` (both cores) to show what that choice is worth.
Every run prints the workers' own compute rate next to the overall rate.

Run: ``python bench/bench_scale.py`` (1M and 4M, ~15 min on 2 cores) or
``--sizes 1000000`` (the 1M runs only).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

BIN = Path(sys.executable).parent
N_FEATURES = 40
PART_ROWS = 250_000
ROW_GROUP_ROWS = 65_536


def teacher_labels(X: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(1234)
    W1 = rng.standard_normal((N_FEATURES, 32)) / np.sqrt(N_FEATURES)
    W2 = rng.standard_normal((32, 10))
    return np.argmax(np.tanh(X.astype(np.float64) @ W1 * 2.0) @ W2, axis=1)


def write_dataset(root: Path, n: int, part_rows: int = PART_ROWS, group_rows: int | None = ROW_GROUP_ROWS) -> Path:
    """N rows as Parquet parts of ``part_rows`` (row groups of ``group_rows``; None: pyarrow's default, up to 1Mi rows).

    Written once; reused when present.
    """
    import pandas as pd

    layout = "" if (part_rows, group_rows) == (PART_ROWS, ROW_GROUP_ROWS) else f"-p{part_rows}-g{group_rows or 'default'}"
    folder = root / f"scale-{n}{layout}"
    done = folder / "_SUCCESS"
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    cols = [f"x{i:02d}" for i in range(N_FEATURES)]
    for part, start in enumerate(range(0, n, part_rows)):
        rows = min(part_rows, n - start)
        rng = np.random.default_rng([part, 99])
        X = rng.standard_normal((rows, N_FEATURES)).astype(np.float32)
        df = pd.DataFrame(X, columns=cols)
        df["label"] = teacher_labels(X).astype(np.int64)
        df.to_parquet(folder / f"part-{part:05d}.parquet", row_group_size=group_rows, index=False)
    done.write_text("")
    return folder


def _tree(pid: int) -> list[int]:
    """``pid`` and every descendant, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _rss_mb(pid: int) -> tuple[float, str]:
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return 0.0, ""
    return rss / 1024, cmd


class Sampler(threading.Thread):
    """Peak RSS of the driver and of each worker process below it, sampled every ``every`` s."""

    def __init__(self, pid: int, every: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.driver = 0.0
        self.workers: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for p in _tree(self.pid):
                mb, cmd = _rss_mb(p)
                if p == self.pid:
                    self.driver = max(self.driver, mb)
                elif "spawn_main" in cmd or "distributed" in cmd:  # worker processes, not the resource tracker
                    self.workers[p] = max(self.workers.get(p, 0.0), mb)
            self.stop.wait(self.every)


def run_train(dataset: Path, args: list[str], scratch: Path, extra_env: dict | None = None) -> dict:
    """One ``nnpipe train`` subprocess; its figures from /proc and from its MLflow run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "DASK_"))}
    env.update(HOME=str(scratch), PREFECT_HOME=str(scratch / ".prefect"), DO_NOT_TRACK="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", MLFLOW_ENABLE_TELEMETRY="false",
               # A loaded 2-core machine can take longer than Prefect's default 20 s to start its temporary API.
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300",
               # Prefect's temporary API per command: nothing left running in the scratch HOME.
               NNPIPE_PREFECT_SERVER="ephemeral")
    # BLAS threads as a user has them: nnpipe decides (nnpipe.blas), unless a configuration sets a variable.
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(name, None)
    env.update(extra_env or {})
    cmd = [str(BIN / "nnpipe"), "train", "--dataset", str(dataset), "--target", "label", *args]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=scratch, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = Sampler(proc.pid)
    sampler.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    from mlflow import MlflowClient

    uri = f"sqlite:///{scratch / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    # The training run (the store also holds the champion alias ledger's run, which has no test metrics).
    run = max((r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
               if "test/accuracy" in r.data.metrics), key=lambda r: r.info.start_time)
    rates = [m.value for m in client.get_metric_history(run.info.run_id, "train/samples_per_s")]
    # Each worker's own compute rate (rows / seconds inside its rounds), median over epochs, summed.
    worker_rates = [float(np.median([m.value for m in client.get_metric_history(run.info.run_id, key)]))
                    for key in run.data.metrics if key.startswith("dist/worker/") and key.endswith("/samples_per_s")]
    # From the second epoch on: what a streamed run costs once its pieces are decoded (the first pass decodes them).
    later = rates[1:] or rates
    return {"wall_s": wall, "samples_per_s": float(np.mean(rates)), "later_per_s": float(np.mean(later)),
            "cache": run.data.tags.get("nnpipe.stream_cache", ""), "test_acc": run.data.metrics["test/accuracy"],
            "driver_mb": sampler.driver, "worker_mb": max(sampler.workers.values(), default=0.0),
            "path": run.data.tags.get("nnpipe.data_path", "in-memory"), "round": run.data.tags.get("nnpipe.round", ""),
            "rows": int(run.data.tags.get("dataset.rows", 0)), "worker_rates": worker_rates,
            "blas": run.data.tags.get("nnpipe.blas_threads", "")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000000,4000000", help="comma-separated row counts")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--only", default="", help="run only configurations whose name contains this (alternatives split by |)")
    ap.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "nnpipe-bench-scale"))
    ap.add_argument("--part-rows", type=int, default=PART_ROWS, help="rows per Parquet part")
    ap.add_argument("--group-rows", type=int, default=ROW_GROUP_ROWS,
                    help="rows per row group (0: pyarrow's default, up to 1Mi rows: a part of 1.25M rows is 2 groups)")
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    common = ["--epochs", str(a.epochs), "--hidden", "64,32"]
    configs = [
        ("single (in memory, reference)", ["--mode", "single", "--batch-size", "256"], {sizes[0]}),
        ("single, OPENBLAS_NUM_THREADS=2", ["--mode", "single", "--batch-size", "256"], {sizes[0]}),
        ("local-sgd, 2 workers, defaults", ["--mode", "local-sgd", "--workers", "2"], set(sizes)),
        ("local-sgd, 2 workers, --overlap 1", ["--mode", "local-sgd", "--workers", "2", "--overlap", "1"], set(sizes)),
        ("local-sgd, 2 workers, --overlap 2", ["--mode", "local-sgd", "--workers", "2", "--overlap", "2"], set(sizes)),
        ("async, 2 workers, defaults", ["--mode", "async", "--workers", "2"], set(sizes)),
        ("local-sgd, 2 workers, streaming", ["--mode", "local-sgd", "--workers", "2", "--stream"], set(sizes)),
        ("async, 2 workers, streaming", ["--mode", "async", "--workers", "2", "--stream"], set(sizes)),
        ("local-sgd, 2 workers, streaming, no cache", ["--mode", "local-sgd", "--workers", "2", "--stream",
                                                       "--no-stream-cache"], {sizes[0]}),
    ]
    results = []
    for n in sizes:
        t0 = time.perf_counter()
        folder = write_dataset(Path(a.root), n, a.part_rows, a.group_rows or None)
        print(f"data: {n:,} rows x {N_FEATURES} float32 at {folder} ({time.perf_counter() - t0:.0f} s)", flush=True)
        for name, args, where in configs:
            if n not in where or not any(o in name for o in a.only.split("|")):
                continue
            with tempfile.TemporaryDirectory(prefix="nnpipe-bench-") as tmp:
                env = {"OPENBLAS_NUM_THREADS": "2"} if "OPENBLAS" in name else {}
                r = run_train(folder, [*args, *common], Path(tmp), env)
            r.update(name=name, n=n)
            results.append(r)
            print(f"  {name:34s} wall {r['wall_s']:6.1f} s  {r['samples_per_s']:9,.0f} samples/s "
                  f"({r['later_per_s']:9,.0f} from epoch 2)  "
                  f"test acc {r['test_acc']:.4f}  driver {r['driver_mb']:6.0f} MB  worker {r['worker_mb']:6.0f} MB  "
                  f"[{r['path']}] {r['round']}{r['blas']}", flush=True)
            if r["cache"]:
                print(f"  {'':34s} stream cache: {r['cache']}", flush=True)
            if r["worker_rates"]:
                own = sum(r["worker_rates"])
                print(f"  {'':34s} workers' own compute: {', '.join(f'{x:,.0f}' for x in r['worker_rates'])} samples/s "
                      f"(sum {own:,.0f}; the run reached {r['samples_per_s'] / own:.0%} of it)", flush=True)
    ref = next((r for r in results if r["name"].startswith("single (")), None)
    print("\nagainst the targets (single-process reference at 1M):")
    for r in results:
        if ref is None or r is ref:
            continue
        print(f"  {r['n']:>9,} {r['name']:34s} speed {r['samples_per_s'] / ref['samples_per_s']:.2f}x single "
              f"(target >= 1.3x)  accuracy {100 * (r['test_acc'] - ref['test_acc']):+.2f} points (target within 1)")
    for r in results:
        if ref is not None and "streaming" in r["name"]:
            print(f"  {r['n']:>9,} {r['name']:34s} from epoch 2: {r['later_per_s'] / ref['later_per_s']:.2f}x single "
                  f"in memory from epoch 2 (streaming target >= 1.3x)")
    drivers = {n: max((r["driver_mb"] for r in results if r["n"] == n and not r["name"].startswith("single")),
                      default=0.0) for n in sizes}
    print(f"  driver peak RSS by N: {', '.join(f'{n:,}: {mb:.0f} MB' for n, mb in drivers.items())} "
          f"(target <= 500 MB, growing <= 10% from 1M to 4M)")


if __name__ == "__main__":
    main()
