"""`nnpipe serve` against `mlflow models serve` on the same registered model, side by side in one run.

In a scratch folder with its own SQLite store it trains and registers two iris
versions (v1 champion), then starts both servers with the same number of
worker processes (2) on ``models:/NAME@champion`` and drives them with
``wrk`` (Debian's package; ``apt-get install -y wrk``):

1. peak throughput and p50/p99 latency, 1-row and 100-row ``dataframe_split`` bodies;
2. nnpipe serve's p99 at about half of its own 1-row peak (a paced wrk: each
   connection waits ``PACE_MS`` between requests);
3. a load run on nnpipe serve during which the champion moves 10 times between
   v1 and v2 (``nnpipe promote``'s library call): failed requests counted by
   wrk, and a probe client that records every answer's version, so the
   longest switch time and any answer outside "the alias now, or within the
   last 5 s" are printed.

Run it alone on the machine (the numbers are the 2 cores' to share)::

    flock /work/cpu.lock .venv/bin/python bench/bench_serve.py
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
NAME = "bench-serve"
WORKERS = 2
DURATION = 10  # seconds per wrk run
PACE_MS = 10
MOVES, MOVE_EVERY, WINDOW = 10, 3.0, 5.0
DONE_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT {"requests": %d, "seconds": %f, "p50_ms": %f, "p99_ms": %f, "non2xx": %d, '
    .. '"socket_errors": %d}\\n', summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, e.status, e.connect + e.read + e.write + e.timeout))
end
"""


def env_for(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "DASK_"))}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}", DO_NOT_TRACK="1", MLFLOW_ENABLE_TELEMETRY="false",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")  # mlflow models serve execs uvicorn by name
    return env


def register_two(root: Path) -> tuple[list[str], list[list[float]]]:
    """Train and register v1 (good, champion) and v2 (one epoch) of NAME; the feature names and test rows."""
    os.environ.update(env_for(root))
    os.chdir(root)
    from nnpipe import TrainConfig, tracking
    from nnpipe.api import train
    from nnpipe.data import load_dataset, split_and_scale

    tracking.configure()
    ds = load_dataset("iris")
    splits = split_and_scale(ds, test_size=0.2, val_size=0.1, seed=0)
    for epochs in (40, 1):
        with tracking.training_run(NAME, {"epochs": epochs}) as run:
            model = train(splits, TrainConfig(epochs=epochs, lr=1e-2, seed=epochs), hidden=(16,)).model
            tracking.log_final_metrics(run.info.run_id, model.evaluate(splits.raw_test, splits.y_test))
            uri = tracking.log_model(run.info.run_id, model, splits.raw_test)
        version = tracking.register_model(uri, NAME, run.info.run_id)
        if version == 1:
            tracking.promote(NAME, 1, reason="bench", check=False)
    return list(splits.feature_names), splits.raw_test.tolist()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], root: Path, label: str, port: int) -> subprocess.Popen:
    log = open(root / f"{label}.log", "wb")
    proc = subprocess.Popen(cmd, cwd=root, env=env_for(root), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{label} exited:\n{(root / f'{label}.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                if r.status == 200:
                    return proc
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"{label} did not answer /ping within 300 s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def wrk(url: str, body: str, root: Path, connections: int, seconds: int = DURATION, pace_ms: int = 0) -> dict:
    script = root / f"wrk-{abs(hash((body, pace_ms)))}.lua"
    lua = ['wrk.method = "POST"', 'wrk.headers["Content-Type"] = "application/json"', f"wrk.body = {json.dumps(body)}"]
    if pace_ms:
        lua.append(f"delay = function() return {pace_ms} end")
    script.write_text("\n".join(lua) + "\n" + DONE_LUA)
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), f"{url}/invocations"],
                         capture_output=True, text=True, timeout=seconds + 60)
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"wrk gave no result:\n{out.stdout}\n{out.stderr}")
    result = json.loads(line[len("RESULT "):])
    result["rps"] = result["requests"] / result["seconds"]
    return result


def body(columns: list[str], rows: list[list[float]], n: int) -> str:
    data = [rows[i % len(rows)] for i in range(n)]
    return json.dumps({"dataframe_split": {"columns": columns, "data": data}})


class Probe(threading.Thread):
    """Posts a 1-row request every 20 ms and records (time, version or error)."""

    def __init__(self, url: str, payload: str):
        super().__init__(daemon=True)
        self.url, self.payload = url + "/invocations", payload.encode()
        self.answers: list[tuple[float, str]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            req = urllib.request.Request(self.url, data=self.payload, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    self.answers.append((time.monotonic(), r.headers.get("X-Model-Version") or "?"))
            except Exception as exc:
                self.answers.append((time.monotonic(), f"error {type(exc).__name__}"))
            time.sleep(0.02)


def alias_moves(url: str, payload: str, root: Path) -> dict:
    """10 champion moves v1 <-> v2 under load; failed requests, switch times, answers outside the window."""
    from nnpipe import tracking

    probe = Probe(url, payload)
    # (start, version): the alias moves somewhere inside the promote call that starts at `start`
    moves: list[tuple[float, str]] = [(float("-inf"), "1")]
    load: dict = {}
    loader = threading.Thread(target=lambda: load.update(
        wrk(url, payload, root, connections=4, seconds=int(MOVES * MOVE_EVERY + WINDOW + 2))))
    loader.start()
    probe.start()
    time.sleep(1)
    for i in range(MOVES):
        target = 2 if i % 2 == 0 else 1
        moves.append((time.monotonic(), str(target)))
        tracking.promote(NAME, target, reason=f"bench move {i + 1}", check=False, force=True)
        time.sleep(MOVE_EVERY)
    loader.join()
    probe.halt.set()
    probe.join(10)

    def allowed(t: float) -> set[str]:
        """Versions the alias may have named at some moment of the last WINDOW seconds."""
        return {v for (when, v), (nxt, _) in zip(moves, moves[1:] + [(float("inf"), "")])
                if when <= t and nxt > t - WINDOW}

    # switch time, an upper bound: from the start of the promote call (the alias moves during
    # it) to the last answer from another version before the next move starts
    switch = []
    for (when, version), (nxt, _) in zip(moves[1:], moves[2:] + [(float("inf"), "")]):
        stale = [t for t, v in probe.answers if when <= t < nxt and v != version]
        switch.append((max(stale) - when) if stale else 0.0)
    outside = [(t, v) for t, v in probe.answers if v not in allowed(t)]
    errors = [v for _, v in probe.answers if v.startswith("error")]
    return {"wrk": load, "probe_answers": len(probe.answers), "probe_errors": len(errors),
            "longest_switch_s": max(switch), "switch_s": switch, "outside_window": len(outside)}


def main() -> int:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    root = Path(tempfile.mkdtemp(prefix="nnpipe-bench-serve-"))
    columns, rows = register_two(root)
    ports = {"nnpipe serve": free_port(), "mlflow models serve": free_port()}
    cmds = {
        "nnpipe serve": [str(BIN / "nnpipe"), "serve", NAME, "--port", str(ports["nnpipe serve"]),
                         "--workers", str(WORKERS)],
        "mlflow models serve": [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{NAME}@champion",
                                "--env-manager", "local", "-h", "127.0.0.1", "-p", str(ports["mlflow models serve"]),
                                "-w", str(WORKERS)],
    }
    procs = {}
    results: dict[str, dict[int, dict]] = {}
    try:
        for label, cmd in cmds.items():
            procs[label] = start(cmd, root, label.replace(" ", "-"), ports[label])
        for label in cmds:  # one at a time: each run has the cores to itself and its load generator
            url = f"http://127.0.0.1:{ports[label]}"
            results[label] = {n: wrk(url, body(columns, rows, n), root, connections=8) for n in (1, 100)}
        nn_url = f"http://127.0.0.1:{ports['nnpipe serve']}"
        peak = results["nnpipe serve"][1]["rps"]
        # paced: each connection sends, waits PACE_MS, sends again; enough connections for about half the peak
        lat_ms = results["nnpipe serve"][1]["p50_ms"] / 2
        conns = max(1, round(peak / 2 * (PACE_MS + lat_ms) / 1000))
        half = wrk(nn_url, body(columns, rows, 1), root, connections=conns, pace_ms=PACE_MS)
        moves = alias_moves(nn_url, body(columns, rows, 1), root)
        with urllib.request.urlopen(nn_url + "/metrics", timeout=10) as r:  # what the workers saw, for the record
            counters = {line.split()[0]: float(line.split()[1]) for line in r.read().decode().splitlines()
                        if line.startswith(("nnpipe_serve_swaps_total", "nnpipe_serve_registry_errors_total"))}
    finally:
        for proc in procs.values():
            stop(proc)

    print(f"\nnnpipe serve vs mlflow models serve: iris MLP, {WORKERS} worker processes each, wrk -t1 -c8 "
          f"-d{DURATION}s, {os.cpu_count()} cores shared by server and load generator\n")
    print(f"{'server':22} {'rows':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'failed':>7}")
    for label, by_rows in results.items():
        for n, r in by_rows.items():
            print(f"{label:22} {n:5d} {r['rps']:9.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} "
                  f"{r['non2xx'] + r['socket_errors']:7d}")
    for n in (1, 100):
        ratio = results["nnpipe serve"][n]["rps"] / results["mlflow models serve"][n]["rps"]
        print(f"throughput ratio nnpipe/mlflow, {n}-row requests: {ratio:.1f}x" + ("  (target >= 3x)" if n == 1 else ""))
    print(f"nnpipe serve at about half its 1-row peak ({half['rps']:.0f} req/s of {peak:.0f}; {conns} connections "
          f"pacing {PACE_MS} ms): p50 {half['p50_ms']:.2f} ms, p99 {half['p99_ms']:.2f} ms (target <= 10 ms)")
    w = moves["wrk"]
    print(f"{MOVES} champion moves v1<->v2 every {MOVE_EVERY:.0f} s under load ({w['rps']:.0f} req/s, "
          f"{w['requests']} requests): failed {w['non2xx'] + w['socket_errors']}; probe {moves['probe_answers']} "
          f"answers, {moves['probe_errors']} failed, {moves['outside_window']} naming a version other than the alias "
          f"now or in the {WINDOW:.0f} s before; longest switch {moves['longest_switch_s']:.2f} s from the start of the promote call "
          f"(each: {', '.join(f'{s:.2f}' for s in moves['switch_s'])})")
    print(f"nnpipe serve counters after the moves: {counters}")
    slow_reads = (root / "nnpipe-serve.log").read_text().count("could not read alias")
    print(f"failed registry reads logged by nnpipe serve: {slow_reads}")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
