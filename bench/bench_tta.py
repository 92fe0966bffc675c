"""Time to accuracy: ``nnpipe train`` from its start until validation accuracy first reaches a target, per mode.

Data: bench_scale's teacher task (N rows x 40 float32 features, labels from a
fixed random 40-32-10 tanh network), as Parquet parts under ``--root``;
4M rows by default. Each mode runs ``nnpipe train --dataset DIR --target label
--until val/accuracy>=T --mode M`` as a subprocess on a scratch MLflow store,
at nnpipe's defaults otherwise (the pipeline's own batch and round size, 2
workers for the distributed modes, the local Prefect server that a user's
first command starts and later ones reuse, started here before the runs;
``--prefect ephemeral`` gives each command Prefect's temporary server
instead), and stops at the target. The figure is
the run's own ``target/seconds`` metric: seconds from the command's process
start (imports, Prefect, cluster start, reading and preparing the data
included) to the end of the first epoch whose validation accuracy reaches
``T``. The bench also prints the epochs it took, the whole command's wall
time, the bytes per epoch on the wire and the ratio against ``single``.

Run: ``python bench/bench_tta.py`` (single, sync, local-sgd, async at 4M in
one invocation), or one mode at a time into one results file, e.g. on a
shared machine: ``--modes async --results tta.json --lock /path/to/lockfile``;
``--report tta.json`` prints the table of what the file holds.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import N_FEATURES, run_train, write_dataset  # noqa: E402  (bench_scale's data and runs)

MODES = ("single", "sync", "local-sgd", "async")


@contextmanager
def local_prefect(home: Path) -> Iterator[Path]:
    """nnpipe's default Prefect for the runs: the local server, started once in ``home``, stopped at the end.

    What a user's second and later ``nnpipe train`` find: the server the first one started. Its
    start (10-20 s here) is not any mode's time to accuracy.
    """
    from bench_scale import BIN

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "NNPIPE_PREFECT"))}
    env.update(HOME=str(home), PREFECT_HOME=str(home / ".prefect"), DO_NOT_TRACK="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    subprocess.run([str(BIN / "nnpipe"), "server", "start"], env=env, check=True, capture_output=True, text=True)
    try:
        yield home
    finally:
        subprocess.run([str(BIN / "nnpipe"), "server", "stop"], env=env, capture_output=True, text=True)


@contextmanager
def held(path: str | None) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` for the block (none without a path): one measurement at a time."""
    if not path:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_mode(dataset: Path, mode: str, target: str, epochs: int, workers: int, scratch: Path,
             home: Path | None = None) -> dict:
    """One ``nnpipe train`` to the target on a scratch MLflow store; its figures from MLflow.

    With ``home``, the command runs with that HOME and nnpipe's default Prefect: the local server
    kept there (see :func:`local_prefect`). Without, Prefect's per-command temporary server in a
    scratch HOME, as bench_scale runs it.
    """
    args = ["--hidden", "64,32", "--mode", mode, "--epochs", str(epochs), "--until", target]
    if mode != "single":
        args += ["--workers", str(workers)]
    env = None if home is None else {"HOME": str(home), "PREFECT_HOME": str(home / ".prefect"),
                                     "NNPIPE_PREFECT_SERVER": "local"}
    wall = run_train(dataset, args, scratch, extra_env=env)["wall_s"]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{scratch / 'mlflow.db'}")
    run = next(r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
               if "nnpipe.target" in r.data.tags)  # the training run (not the alias ledger's)
    m, tags = run.data.metrics, run.data.tags
    points = {key: client.get_metric_history(run.info.run_id, key)
              for key in ("dist/bytes_sent", "dist/bytes_received", "val/accuracy", "train/samples_per_s")}
    history = {key: [p.value for p in v] for key, v in points.items()}
    # Where the seconds went: the first epoch ends at (its val/accuracy's timestamp - the command's start), and
    # its training took train rows / train/samples_per_s (rows split 70/10/20); the rest is start-up and validation.
    split = {}
    if m.get("target/seconds") is not None and history["train/samples_per_s"]:
        start = points["val/accuracy"][int(m["target/epochs"]) - 1].timestamp / 1e3 - m["target/seconds"]
        first_end = points["val/accuracy"][0].timestamp / 1e3 - start
        train_s = 0.7 * int(tags.get("dataset.rows", 0)) / history["train/samples_per_s"][0]
        split = {"first_epoch_end_s": first_end, "epoch_train_s": train_s, "before_training_s": first_end - train_s}
    per_epoch = {k: sum(v) / len(v) for k, v in history.items() if v and k.startswith("dist/")}
    return {"mode": mode, "target": target, "reached": tags.get("nnpipe.target_reached") == "true",
            "seconds": m.get("target/seconds"), "epochs": m.get("target/epochs"), "wall_s": wall,
            "val_accuracy": history["val/accuracy"], "test_accuracy": m["test/accuracy"],
            "bytes_sent_per_epoch": per_epoch.get("dist/bytes_sent"),
            "bytes_received_per_epoch": per_epoch.get("dist/bytes_received"),
            "round": tags.get("nnpipe.round", ""), "path": tags.get("nnpipe.data_path", ""), **split}


def report(results: list[dict]) -> None:
    ref = next((r for r in results if r["mode"] == "single" and r["reached"]), None)
    print(f"\ntime to {results[0]['target']} on {results[0].get('rows', 0):,} rows "
          f"(seconds from the nnpipe train command's start):")
    for r in results:
        line = f"  {r['mode']:10s} "
        if r["reached"]:
            ratio = f"{ref['seconds'] / r['seconds']:.2f}x single" if ref else "no single reference"
            line += f"{r['seconds']:7.1f} s at epoch {int(r['epochs']):2d}  ({ratio})"
        else:
            line += f"not reached in the epoch budget (best val/accuracy {max(r['val_accuracy'], default=0):.4f})"
        line += f"  command wall {r['wall_s']:6.1f} s  test acc {r['test_accuracy']:.4f}"
        if r.get("bytes_sent_per_epoch"):
            sent, got = r["bytes_sent_per_epoch"], r["bytes_received_per_epoch"]
            line += (f"  wire {sent / 1e6:.2f} MB out, {got / 1e6:.2f} MB in per epoch "
                     f"({max(sent, got) * 8 / 1e9:.3f} s at 1 Gbit/s)")
        if r.get("first_epoch_end_s") is not None:
            line += (f"\n  {'':10s} first epoch ends at {r['first_epoch_end_s']:.1f} s: {r['epoch_train_s']:.1f} s "
                     f"training, ~{r['before_training_s']:.1f} s start-up (Prefect, cluster, data) and validation")
        if r.get("round"):
            line += f"  [{r['round']}]"
        print(line, flush=True)
    best = max((ref["seconds"] / r["seconds"] for r in results if ref and r["reached"] and r["mode"] != "single"),
               default=None)
    if best is not None:
        print(f"  best distributed mode: {best:.2f}x faster than single to the target (issue 24's target: >= 1.6x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4_000_000)
    ap.add_argument("--target", default="val/accuracy>=0.8", help="the --until target every mode runs to")
    ap.add_argument("--epochs", type=int, default=3, help="the epoch budget (a mode that misses the target uses it)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {','.join(MODES)}")
    ap.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "nnpipe-bench-scale"))
    ap.add_argument("--results", help="append each mode's figures to this JSON file (runs split over invocations)")
    ap.add_argument("--report", metavar="FILE", help="only print the table of a results file")
    ap.add_argument("--lock", help="hold an exclusive flock on this file during each mode's run")
    ap.add_argument("--prefect", choices=("local", "ephemeral"), default="local",
                    help="local: nnpipe's default, the local Prefect server (started once before the runs); "
                         "ephemeral: Prefect's temporary server per command (NNPIPE_PREFECT_SERVER=ephemeral)")
    a = ap.parse_args()
    if a.report:
        report(json.loads(Path(a.report).read_text()))
        return
    modes = [m for m in a.modes.split(",") if m]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        ap.error(f"--modes: unknown {unknown}; known: {list(MODES)}")
    t0 = time.perf_counter()
    folder = write_dataset(Path(a.root), a.rows)
    print(f"data: {a.rows:,} rows x {N_FEATURES} float32 at {folder} ({time.perf_counter() - t0:.0f} s)", flush=True)
    results = json.loads(Path(a.results).read_text()) if a.results and Path(a.results).exists() else []
    with ExitStack() as stack:
        home = None
        if a.prefect == "local":
            home = stack.enter_context(local_prefect(Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix="nnpipe-bench-home-")))))
        for mode in modes:
            with held(a.lock), tempfile.TemporaryDirectory(prefix="nnpipe-bench-") as tmp:
                r = run_mode(folder, mode, a.target, a.epochs, a.workers, Path(tmp), home)
            r["rows"], r["prefect"] = a.rows, a.prefect
            _record(a, mode, r)
            results = [x for x in results if not (x["mode"] == mode and x["rows"] == a.rows)] + [r]
            if a.results:
                Path(a.results).write_text(json.dumps(results, indent=1))
    report([r for r in results if r["rows"] == a.rows])


def _record(a: argparse.Namespace, mode: str, r: dict) -> None:
    print(f"  {mode}: {'reached' if r['reached'] else 'not reached'}"
          + (f" in {r['seconds']:.1f} s, epoch {int(r['epochs'])}" if r["reached"] else "")
          + f" (command {r['wall_s']:.1f} s, Prefect {a.prefect})", flush=True)


if __name__ == "__main__":
    main()
