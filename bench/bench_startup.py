"""How long `nnpipe train` on iris and `nnpipe --help` take, and where the time goes.

Runs the real command as a user would, in a scratch folder with its own
PREFECT_HOME and MLflow store:

- ``nnpipe --help`` (median of 5);
- ``nnpipe train`` cold (the first command: it starts the local Prefect server);
- ``nnpipe train`` warm (median of 3, the server reused);
- the reference: ``nnpipe train`` with Prefect's per-command temporary server
  (``NNPIPE_PREFECT_SERVER=ephemeral``, what every command paid before), median of 2;
- a breakdown of one warm run by cProfile: imports, Prefect's flow engine and
  each pipeline step.

    .venv/bin/python bench/bench_startup.py
"""

from __future__ import annotations

import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "DASK_"))}
    env.update(HOME=str(home), PREFECT_HOME=str(home / ".prefect"), DO_NOT_TRACK="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", MLFLOW_ENABLE_TELEMETRY="false", **extra)
    return env


def timed(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return elapsed


PROFILE = """
import cProfile, sys
sys.argv = ["nnpipe", "train"]
from nnpipe.cli import main
cProfile.run("\\ntry:\\n    main()\\nexcept SystemExit:\\n    pass\\n", sys.argv_profile)
"""

# (label, substring of the profiled function's "file(name)"; line numbers move, names don't)
PHASES = [
    ("import prefect", "prefect/__init__.py(<module>)"),
    ("import mlflow", "mlflow/__init__.py(<module>)"),
    ("Prefect client (get_client)", "client/orchestration/__init__.py(get_client)"),
    ("flow run (all steps)", "flow_engine.py(call_flow_fn)"),
    ("  load data", "nnpipe/data.py(load_dataset)"),
    ("  open MLflow run", "nnpipe/tracking/runs.py(training_run)"),
    ("  train (100 epochs)", "nnpipe/api.py(train)"),
    ("  log model", "nnpipe/tracking/pyfunc.py(log_model)"),
    ("  plots and config", "nnpipe/tracking/plots.py(log_training_artifacts)"),
]


def breakdown(cwd: Path, env: dict[str, str]) -> list[tuple[str, float]]:
    out = cwd / "train.prof"
    code = PROFILE.replace("sys.argv_profile", repr(str(out)))
    subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, timeout=600, check=True)
    stats = pstats.Stats(str(out)).stats  # {(file, line, name): (cc, nc, tt, ct, callers)}
    rows = []
    for label, key in PHASES:
        best = 0.0
        for (file, line, name), (_, _, _, ct, _) in stats.items():
            if key in f"{file}({name})":
                best = max(best, ct)
        rows.append((label, best))
    return rows


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="nnpipe-bench-startup-") as tmp:
        home = Path(tmp)
        env = env_for(home)
        nnpipe = str(BIN / "nnpipe")
        try:
            helps = [timed([nnpipe, "--help"], home, env) for _ in range(5)]
            cold = timed([nnpipe, "train"], home, env)
            warm = [timed([nnpipe, "train"], home, env) for _ in range(3)]
            ephemeral_env = env_for(home, NNPIPE_PREFECT_SERVER="ephemeral")
            ephemeral = [timed([nnpipe, "train"], home, ephemeral_env) for _ in range(2)]
            phases = breakdown(home, env)
        finally:
            subprocess.run([nnpipe, "server", "stop"], env=env, capture_output=True, timeout=120)
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"{'what':48s} {'seconds':>8s}")
    print(f"{'nnpipe --help (median of 5)':48s} {statistics.median(helps):8.2f}")
    print(f"{'nnpipe train, first run (starts Prefect server)':48s} {cold:8.2f}")
    print(f"{'nnpipe train, warm (median of 3)':48s} {statistics.median(warm):8.2f}"
          f"   ({', '.join(f'{w:.2f}' for w in warm)})")
    print(f"{'reference: temporary Prefect server per run':48s} {statistics.median(ephemeral):8.2f}")
    print(f"{'warm speed-up over the reference':48s} {statistics.median(ephemeral) / statistics.median(warm):7.2f}x")
    print("\nbreakdown of one warm run (cProfile, cumulative; adds ~20% overhead):")
    for label, seconds in phases:
        print(f"  {label:46s} {seconds:8.2f}")


if __name__ == "__main__":
    main()
