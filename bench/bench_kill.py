"""Kill survival: SIGKILL a Dask worker in the middle of ``nnpipe train``, N times per mode.

For each run the bench starts nothing but the training: the cluster is a
hand-started ``dask scheduler`` with ``--cluster-workers`` (3) ``dask worker``
processes of one thread each and no nanny, reached through
``DASK_SCHEDULER_ADDRESS`` exactly as a user would. ``nnpipe train`` (digits,
``--workers`` = the cluster size, early stopping off) runs as a subprocess; at
a random round between 25% and 60% of the epochs, plus a random fraction of
a round, the bench SIGKILLs one worker process chosen at random, then starts a
replacement ``dask worker`` at once (so the cluster is back to full size for
the next run; the run itself must carry on with the survivors).

Per run it records, from the command's own output, each line stamped as it
arrives:

* finished: exit code 0 and a registered model version (``model: NAME version V``);
* the longest stall: the largest gap between two consecutive ``epoch k/N``
  lines over the whole training, next to the median gap (a normal round on
  this machine, whatever its load) and the gap that spans the kill;
* the tail: seconds from the last epoch line to the command's exit (the
  final state, test metrics and registration; a 30 s connect timeout in any
  of them would show here);
* whether the run itself counted the loss: the largest ``dist/workers_lost``
  it logged to MLflow (column ``lost``).

``--moment`` chooses when the worker dies (default ``mid-run``, as above):

* ``placement``: as soon as the scheduler shows the run's first shard or
  trainer task (shards being read, trainers being created);
* ``first-round``: once every trainer exists, within the next 0.2 s (the
  first round);
* ``mid-run``: at a random round between 25% and 60% of the epochs;
* ``checkpoint``: in the last fifth of the epoch that ends in the pipeline's
  checkpoint (every 10 epochs, the second one), so the loss meets the fetch
  of the trainers' states or the round before it;
* ``evaluation``: at the last epoch line (the final state, the test metrics
  and the registration follow).

``--mode scheduler`` instead kills the *scheduler* mid-run (once per run) and
times how long the run takes to end and what it says (the issue's target: a
FAILED run with a plain message within 60 s).

    flock /work/cpu.lock .venv/bin/python bench/bench_kill.py --mode sync --runs 10
    flock /work/cpu.lock .venv/bin/python bench/bench_kill.py --mode local-sgd --runs 10
    flock /work/cpu.lock .venv/bin/python bench/bench_kill.py --mode async --runs 10
    flock /work/cpu.lock .venv/bin/python bench/bench_kill.py --mode scheduler --runs 3
    flock /work/cpu.lock .venv/bin/python bench/bench_kill.py --mode async --moment placement --runs 10

One mode per invocation keeps each under ~10 minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
ROUND = re.compile(r"^(?:round|epoch) (\d+)(?:/\d+)?:")  # the CLI's per-epoch line ("round" before Nov 2026)
VERSION = re.compile(r"^model:\s+(\S+) version (\d+)")
STALL_GOAL_S = 5.0
RECOVER_GOAL_S = 15.0  # the bound from a loss before training to the run going on
RUN_TIMEOUT_S = 300.0
# Epochs per mode so that training lasts roughly 15-30 s here (a sync round is ~3 trainer calls per step).
EPOCHS = {"sync": 50, "local-sgd": 300, "async": 300, "scheduler": 50}
MOMENTS = ("placement", "first-round", "mid-run", "checkpoint", "evaluation")
CHECKPOINT_EVERY = 10  # the pipeline's default (PIPELINE_TRAIN_DEFAULTS)


def env(scratch: Path, **extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "DASK_"))}
    out.update(HOME=str(scratch), PREFECT_HOME=str(scratch / ".prefect"), DO_NOT_TRACK="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", MLFLOW_ENABLE_TELEMETRY="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300",
               NNPIPE_PREFECT_SERVER="ephemeral",  # Prefect's temporary API per command: nothing left running
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               **extra)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A hand-started scheduler and ``n`` one-thread workers without nannies (a SIGKILL is final)."""

    def __init__(self, scratch: Path, n: int):
        self.scratch, self.n = scratch, n
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.logs = scratch / "cluster-logs"
        self.logs.mkdir(exist_ok=True)
        self.count = 0
        self.scheduler = self._spawn(["dask", "scheduler", "--host", "127.0.0.1", "--port",
                                      self.address.rsplit(":", 1)[1], "--no-dashboard"], "scheduler")
        self.workers: list[subprocess.Popen] = [self.spawn_worker() for _ in range(n)]
        self.wait_for(n)

    def _spawn(self, args: list[str], name: str) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")
        return subprocess.Popen([str(BIN / args[0]), *args[1:]], env=env(self.scratch), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def spawn_worker(self) -> subprocess.Popen:
        self.count += 1
        return self._spawn(["dask", "worker", self.address, "--nthreads", "1", "--no-nanny", "--no-dashboard",
                            "--name", f"w{self.count}"], f"worker-{self.count}")

    def n_registered(self) -> int:
        from distributed import Client

        with Client(self.address, timeout="10s", set_as_default=False) as c:
            return len(c.scheduler_info(n_workers=-1)["workers"])

    def wait_for(self, n: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.n_registered() >= n:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{n} workers did not register at {self.address} within {timeout:.0f} s")
            time.sleep(0.5)

    def kill_worker(self, rng: random.Random, respawn: bool = True) -> int:
        """SIGKILL one live worker at random and (``respawn``) start its replacement; the killed pid."""
        live = [p for p in self.workers if p.poll() is None]
        victim = rng.choice(live)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        self.workers.remove(victim)
        if respawn:
            self.workers.append(self.spawn_worker())
        return victim.pid

    def refill(self) -> None:
        """Back to ``n`` workers (after a run whose kill was not replaced)."""
        while len(self.workers) < self.n:
            self.workers.append(self.spawn_worker())
        self.wait_for(self.n)

    def run_keys(self, client: object) -> dict[str, str]:
        """The scheduler's ``nnpipe-shard``/``nnpipe-trainer`` tasks and their states."""

        def keys(dask_scheduler) -> dict[str, str]:  # runs on the scheduler
            return {str(k): ts.state for k, ts in dask_scheduler.tasks.items()
                    if str(k).startswith(("nnpipe-shard", "nnpipe-trainer"))}

        return client.run_on_scheduler(keys)

    def kill_when(self, moment: str, rng: random.Random, respawn: bool, stop: threading.Event,
                  killed: list[float]) -> None:
        """Watch the scheduler for ``moment`` (placement, first-round) and kill one worker then."""
        from distributed import Client

        with Client(self.address, timeout="10s", set_as_default=False) as c:
            before = set(self.run_keys(c))  # a previous run's keys (released soon) do not count
            while not stop.is_set():
                keys = {k: v for k, v in self.run_keys(c).items() if k not in before}
                trainers = [v for k, v in keys.items() if k.startswith("nnpipe-trainer")]
                if moment == "placement" and keys:
                    break
                if moment == "first-round" and trainers and all(v == "memory" for v in trainers):
                    time.sleep(rng.random() * 0.2)
                    break
                time.sleep(0.01)
            else:
                return
        killed.append(time.monotonic())
        self.kill_worker(rng, respawn)

    def kill_scheduler(self) -> int:
        os.kill(self.scheduler.pid, signal.SIGKILL)
        self.scheduler.wait()
        return self.scheduler.pid

    def close(self) -> None:
        for p in [*self.workers, self.scheduler]:
            if p.poll() is None:
                p.terminate()
        for p in [*self.workers, self.scheduler]:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@dataclass
class Run:
    code: int = -1
    version: str | None = None
    rounds: list[tuple[float, int]] = field(default_factory=list)  # (arrival time, round number)
    killed_at: float | None = None
    kill_round: int | None = None
    ended_at: float = 0.0
    lines: list[tuple[float, str]] = field(default_factory=list)

    def gaps(self) -> list[tuple[float, float]]:
        """(gap seconds, start time) between consecutive round lines."""
        return [(b[0] - a[0], a[0]) for a, b in zip(self.rounds, self.rounds[1:])]

    @property
    def max_gap(self) -> float:
        return max((g for g, _ in self.gaps()), default=float("nan"))

    @property
    def median_gap(self) -> float:
        g = [g for g, _ in self.gaps()]
        return statistics.median(g) if g else float("nan")

    @property
    def tail(self) -> float:
        """Seconds from the last round line to the command's exit (final state, test metrics, registration)."""
        return self.ended_at - self.rounds[-1][0] if self.rounds else float("nan")

    @property
    def kill_gap(self) -> float:
        """The gap between the last round line before the kill and the first after it."""
        if self.killed_at is None:
            return float("nan")
        before = [t for t, _ in self.rounds if t <= self.killed_at]
        after = [t for t, _ in self.rounds if t > self.killed_at]
        if not before or not after:
            return float("nan")
        return after[0] - before[-1]

    workers_lost: float = float("nan")  # the run's own count (MLflow ``dist/workers_lost``, its largest value)

    @property
    def first_line(self) -> float:
        """Seconds from a kill before training (placement, first round) to the first epoch line; else 0."""
        if self.killed_at is None or not self.rounds or self.rounds[0][0] < self.killed_at:
            return 0.0
        return self.rounds[0][0] - self.killed_at

    def last_lines(self, n: int = 4) -> str:
        return " | ".join(line.strip()[:160] for _, line in self.lines[-n:])


def one_run(cluster: Cluster, scratch: Path, mode: str, epochs: int, rng: random.Random, hidden: str,
            kill_it: bool = True, respawn: bool = True, moment: str = "mid-run") -> Run:
    train_mode = "sync" if mode == "scheduler" else mode
    config = scratch / "kill.toml"
    config.write_text("[train]\npatience = 100000\n")  # no early stop: the kill always lands mid-run
    cmd = [str(BIN / "nnpipe"), "train", "--dataset", "digits", "--mode", train_mode, "--workers",
           str(cluster.n), "--epochs", str(epochs), "--hidden", hidden, "--config", str(config), "--model-name", f"kill-{mode}"]
    run = Run()
    kill_round = rng.randint(int(0.25 * epochs), int(0.6 * epochs))
    fraction = rng.random()
    if moment == "checkpoint":  # the epoch line before the second checkpoint's; killed late in that epoch
        kill_round, fraction = 2 * CHECKPOINT_EVERY - 1, 0.8 + 0.2 * rng.random()
    elif moment == "evaluation":  # the last epoch line: what follows is the final state, test and registration
        kill_round, fraction = epochs, 0.0
    elif moment in ("placement", "first-round"):
        kill_round = 0
    run.kill_round = kill_round
    stop = threading.Event()
    watched: list[float] = []
    watcher = None
    if kill_it and moment in ("placement", "first-round"):
        watcher = threading.Thread(target=cluster.kill_when, args=(moment, rng, respawn, stop, watched), daemon=True)
        watcher.start()
    proc = subprocess.Popen(cmd, cwd=scratch, env=env(scratch, DASK_SCHEDULER_ADDRESS=cluster.address),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    timer: threading.Timer | None = None

    def kill() -> None:
        run.killed_at = time.monotonic()
        if mode == "scheduler":
            cluster.kill_scheduler()
        else:
            cluster.kill_worker(rng, respawn)

    # A run that hangs is a result too: killed after RUN_TIMEOUT_S and counted as not finished.
    watchdog = threading.Timer(RUN_TIMEOUT_S, proc.kill)
    watchdog.start()
    assert proc.stdout is not None
    for line in proc.stdout:
        now = time.monotonic()
        run.lines.append((now, line))
        m = ROUND.match(line)
        if m:
            k = int(m.group(1))
            run.rounds.append((now, k))
            if k == kill_round and timer is None and kill_it and moment not in ("placement", "first-round"):
                # Somewhere inside the next round: not always right at an epoch boundary.
                typical = run.median_gap if len(run.rounds) > 3 else 0.3
                timer = threading.Timer(fraction * typical, kill)
                timer.start()
        v = VERSION.match(line)
        if v:
            run.version = v.group(2)
    run.code = proc.wait()
    run.ended_at = time.monotonic()
    watchdog.cancel()
    stop.set()
    if watcher is not None:
        watcher.join()
        run.killed_at = watched[0] if watched else None
    run.workers_lost = workers_lost(scratch / "mlflow.db")
    with open(scratch / f"run-{mode}-{time.time():.0f}.log", "w") as f:
        f.writelines(f"{t - run.lines[0][0]:8.3f} {line}" for t, line in run.lines)
    if timer is not None:
        timer.join()
    return run


def workers_lost(db: Path) -> float:
    """The newest training run's largest ``dist/workers_lost``: did the run itself see the kill?"""
    import sqlite3

    con = sqlite3.connect(db)
    try:
        row = con.execute("SELECT MAX(m.value) FROM metrics m WHERE m.key = 'dist/workers_lost' AND m.run_uuid = "
                          "(SELECT run_uuid FROM runs WHERE name LIKE 'digits-%' ORDER BY start_time DESC LIMIT 1)"
                          ).fetchone()
    finally:
        con.close()
    return float("nan") if row is None or row[0] is None else float(row[0])


def report_workers(mode: str, runs: list[Run], workers: int, respawn: bool, killed: bool = True,
                   moment: str = "mid-run") -> None:
    after = "a replacement started right after the kill" if respawn else "no replacement until the run ends"
    what = f"each with one worker SIGKILLed at {moment} ({workers} workers, {after})" if killed else \
        f"nothing killed: the reference ({workers} workers)"
    print(f"\nmode {mode}: {len(runs)} runs, {what}")
    print(f"{'run':>3s} {'kill@':>6s} {'exit':>4s} {'version':>7s} {'lost':>4s} {'median':>7s} "
          f"{'kill gap':>8s} {'max gap':>7s} {'first':>6s} {'tail':>6s}  verdict")
    ok = 0
    for i, r in enumerate(runs, 1):
        good = r.code == 0 and r.version is not None and r.max_gap <= STALL_GOAL_S and r.first_line <= RECOVER_GOAL_S

        ok += good
        verdict = "ok" if good else ("stall" if r.code == 0 and r.version else f"FAILED: {r.last_lines()}")
        print(f"{i:3d} {r.kill_round:6d} {r.code:4d} {r.version or '-':>7s} {r.workers_lost:4.0f} "
              f"{r.median_gap:6.2f}s {r.kill_gap:7.2f}s {r.max_gap:6.2f}s {r.first_line:5.1f}s {r.tail:5.1f}s  {verdict}",
              flush=True)
    finished = sum(r.code == 0 and r.version is not None for r in runs)
    stalls = [r.max_gap for r in runs if r.rounds]
    print(f"mode {mode}: {finished}/{len(runs)} finished and registered; {ok}/{len(runs)} also without a stall "
          f"over {STALL_GOAL_S:.0f} s; longest stall {max(stalls, default=float('nan')):.2f} s, median of the "
          f"runs' longest {statistics.median(stalls) if stalls else float('nan'):.2f} s")


def report_scheduler(runs: list[Run]) -> None:
    print("\nmode scheduler: the Dask scheduler SIGKILLed mid-run (target: ends FAILED with a plain message "
          "within 60 s)")
    for i, r in enumerate(runs, 1):
        took = r.ended_at - r.killed_at if r.killed_at else float("nan")
        said = next((line.strip() for _, line in r.lines if "scheduler" in line.lower() and "lost" in line.lower()),
                    r.last_lines(1))
        print(f"{i:3d} exit {r.code:3d}  ended {took:5.1f} s after the kill  says: {said[:200]}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", required=True, choices=["sync", "local-sgd", "async", "scheduler"])
    ap.add_argument("--moment", choices=MOMENTS, default="mid-run", help="when the worker dies (see the docstring)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=None, help="default: per mode, ~15-30 s of training")
    ap.add_argument("--cluster-workers", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hidden", default="512,256")
    ap.add_argument("--no-kill", action="store_true", help="reference runs: the same runs, nothing killed")
    ap.add_argument("--no-respawn", action="store_true",
                    help="no replacement during the run: the survivors finish it (the cluster is refilled between runs)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory (cluster logs) and print it")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    epochs = a.epochs or EPOCHS[a.mode]
    tmp = tempfile.mkdtemp(prefix=f"nnpipe-bench-kill-{a.mode}-")
    scratch = Path(tmp)
    runs: list[Run] = []
    t0 = time.perf_counter()
    cluster = None
    try:
        for i in range(a.runs):
            if cluster is None:
                cluster = Cluster(scratch, a.cluster_workers)
            else:
                cluster.refill()  # the replacement (or, with --no-respawn, a new worker) has registered
            r = one_run(cluster, scratch, a.mode, epochs, rng, a.hidden, kill_it=not a.no_kill,
                        respawn=not a.no_respawn, moment=a.moment)
            runs.append(r)
            print(f"  run {i + 1}: exit {r.code} version {r.version} max gap {r.max_gap:.2f} s "
                  f"({time.perf_counter() - t0:.0f} s so far)", flush=True)
            if a.mode == "scheduler":
                cluster.close()
                cluster = None
    finally:
        if cluster is not None:
            cluster.close()
        if a.keep:
            print(f"scratch kept: {scratch}")
        else:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)
    if a.mode == "scheduler":
        report_scheduler(runs)
    else:
        report_workers(a.mode, runs, a.cluster_workers, not a.no_respawn, killed=not a.no_kill, moment=a.moment)
    print(f"wall {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
