"""Faults and bad input, timed: how fast ``nnpipe train`` says no, and what concurrent starts leave behind.

Prints, for real ``nnpipe`` processes on this machine:

* the time to report each class of bad input (exit code, first line), next
  to the time of ``nnpipe train --help`` in the same run (the floor: the
  interpreter and the CLI importing);
* the time to report a tracking server that refuses connections, one that
  accepts them and never answers, and a dead Dask scheduler;
* N = 4 and 8 processes started at once on a brand-new SQLite store, each
  logging, registering and gating one model: distinct versions, the right
  champion, an intact database, and the wall time.

Kill survival (a worker SIGKILLed mid-run in each mode) and a scheduler
killed mid-run are ``bench/bench_kill.py``: with this script, every figure
issue 10 asks for.

    .venv/bin/python bench/bench_faults.py [--skip-concurrency]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
NNPIPE = str(BIN / "nnpipe")


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_API", "DASK_"))}
    out.update(DO_NOT_TRACK="1", MLFLOW_ENABLE_TELEMETRY="false", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return out


def timed(args: list[str], cwd: Path, **extra: str) -> tuple[float, int, str]:
    t = time.perf_counter()
    p = subprocess.run([NNPIPE, *args], cwd=cwd, env=env(**extra), capture_output=True, text=True, timeout=900)
    first = (p.stderr.strip().splitlines() or p.stdout.strip().splitlines() or [""])[0]
    return time.perf_counter() - t, p.returncode, first


def bad_inputs(root: Path) -> None:
    d = root / "data"
    d.mkdir()
    (d / "dup.csv").write_text("a,b,a,y\n1,2,3,0\n4,5,6,1\n")
    (d / "const.csv").write_text("a,b,y\n" + "".join(f"1,2,{i % 2}\n" for i in range(50)))
    (d / "huge.csv").write_text("a,b,y\n" + "".join(f"{i},{'1e300' if i == 7 else i},{i % 2}\n" for i in range(50)))
    (d / "nan.csv").write_text("a,b,y\n" + "".join(f"{i},{'' if i == 30 else i},{i % 2}\n" for i in range(50)))
    (d / "sheet.xlsx").write_bytes(b"PK\x03\x04 a workbook")
    (d / "data.json").write_text("[]")
    sink = socket.socket()  # accepts connections (kernel backlog) and never answers
    sink.bind(("127.0.0.1", 0))
    sink.listen(16)
    silent = f"http://127.0.0.1:{sink.getsockname()[1]}"
    cases = [
        ("floor: nnpipe train --help", ["train", "--help"], {}),
        ("config: --lr inf", ["train", "--lr", "inf"], {}),
        ("config: --epochs 0", ["train", "--epochs", "0"], {}),
        ("config: --model-name ''", ["train", "--model-name", ""], {}),
        ("config: --model-name a/b", ["train", "--model-name", "a/b"], {}),
        ("config: 1000-char model name", ["train", "--model-name", "x" * 1000], {}),
        ("data: unknown dataset mnist", ["train", "--dataset", "mnist"], {}),
        ("data: .xlsx", ["train", "--dataset", str(d / "sheet.xlsx"), "--target", "y"], {}),
        ("data: .json", ["train", "--dataset", str(d / "data.json"), "--target", "y"], {}),
        ("data: duplicate columns", ["train", "--dataset", str(d / "dup.csv"), "--target", "y"], {}),
        ("data: all-constant features", ["train", "--dataset", str(d / "const.csv"), "--target", "y"], {}),
        ("data: 1e300 value", ["train", "--dataset", str(d / "huge.csv"), "--target", "y"], {}),
        ("data: NaN value", ["train", "--dataset", str(d / "nan.csv"), "--target", "y"], {}),
        ("server: tracking refuses connections", ["train"],
         {"MLFLOW_TRACKING_URI": "http://alice:S3cretPW@127.0.0.1:9"}),
        ("server: tracking accepts, never answers", ["train"], {"MLFLOW_TRACKING_URI": silent}),
        ("server: dead Dask scheduler", ["train", "--mode", "sync", "--scheduler", "tcp://127.0.0.1:9"], {}),
    ]
    print(f"{'case':42s} {'seconds':>8s} {'x floor':>8s} {'exit':>4s}  first line")
    floor = None
    try:
        for label, args, extra in cases:
            seconds, code, first = timed(args, root, **extra)
            floor = floor or seconds
            assert "S3cretPW" not in first
            print(f"{label:42s} {seconds:8.2f} {seconds / floor:8.1f} {code:4d}  {first[:110]}", flush=True)
    finally:
        sink.close()


WORKER = r"""
import json, sys, time
from pathlib import Path
import numpy as np
from nnpipe import tracking
from nnpipe.api import build_spec
from nnpipe.model import Model
from nnpipe.core.network import init_params
barrier, n, me, score = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
spec = build_spec("multiclass", 4, 3, (4,))
model = Model(spec, init_params(spec, np.random.default_rng(int(me))), classes=np.array([0, 1, 2]))
(barrier / f"ready-{me}").touch()
while len(list(barrier.glob("ready-*"))) < n:
    time.sleep(0.005)
t0 = time.time()
tracking.configure()
with tracking.training_run("bench", {"worker": me}) as run:
    tracking.log_final_metrics(run.info.run_id, {"accuracy": score})
    uri = tracking.log_model(run.info.run_id, model, np.zeros((2, 4)))
version = tracking.register_model(uri, "bench", run.info.run_id)
decision = tracking.promote_if_better("bench", version)
print(json.dumps({"version": version, "score": score, "seconds": time.time() - t0}))
"""


def concurrent_start(root: Path, n: int) -> None:
    db = root / f"store-{n}" / "mlflow.db"
    uri = f"sqlite:///{db}"
    barrier = root / f"barrier-{n}"
    barrier.mkdir()
    scores = [round(0.5 + 0.4 * ((7 * i) % n) / n, 3) for i in range(n)]
    t = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(barrier), str(n), str(i), str(s)],
                              env=env(MLFLOW_TRACKING_URI=uri), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i, s in enumerate(scores)]
    results, failures = [], 0
    for p in procs:
        out, err = p.communicate(timeout=900)
        if p.returncode:
            failures += 1
            print(f"  a process failed: {err.strip().splitlines()[-1:]}")
        else:
            results.append(json.loads(out.strip().splitlines()[-1]))
    wall = time.perf_counter() - t
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = int(c.get_model_version_by_alias("bench", "champion").version)
    best = max(results, key=lambda r: r["score"])["version"] if results else None
    con = sqlite3.connect(db)
    integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
    tmp_tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE name LIKE '_alembic_tmp%'")]
    con.close()
    versions = sorted(r["version"] for r in results)
    print(f"{n} processes: {len(results)}/{n} finished, versions {versions} "
          f"({'distinct' if versions == list(range(1, n + 1)) else 'NOT distinct'}), champion v{champion} "
          f"({'best' if champion == best else 'NOT the best'}), sqlite integrity {integrity}, "
          f"leftover alembic tables {tmp_tables or 'none'}, wall {wall:.1f} s, "
          f"per process {min(r['seconds'] for r in results):.1f}-{max(r['seconds'] for r in results):.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-concurrency", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nnpipe-bench-faults-") as tmp:
        root = Path(tmp)
        bad_inputs(root)
        if not args.skip_concurrency:
            print()
            for n in (4, 8):
                concurrent_start(root, n)


if __name__ == "__main__":
    main()
