"""Two runs finishing at once: distinct versions, and the champion never ends at a worse model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nnpipe import tracking
from tests.tracking.helpers import child_env

WORKER = str(Path(__file__).with_name("gate_worker.py"))
START_WORKER = str(Path(__file__).with_name("start_worker.py"))
# interleaved so that every ordering of the two processes' gates matters
SCORES = {"a": [0.50, 0.70, 0.90, 0.80], "b": [0.60, 0.65, 0.95, 0.85]}


def test_two_processes_gating_at_once_keep_the_best_champion(store, unique_name, tmp_path):
    env = child_env(store, NNPIPE_LOCK_DIR=str(tmp_path))  # same lock as the fixture's for http stores
    procs = [
        subprocess.Popen([sys.executable, WORKER, unique_name, str(tmp_path), me, *map(str, scores)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for me, scores in SCORES.items()
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=400)
        assert p.returncode == 0, err[-4000:]
        results += json.loads(out.strip().splitlines()[-1])

    versions = sorted(r["version"] for r in results)
    assert versions == list(range(1, 9)), "each registration got its own version"
    score_of = {r["version"]: r["score"] for r in results}
    best = max(score_of, key=score_of.get)
    assert tracking.alias_version(unique_name, "champion") == best

    # replay: every gate saw the champion its predecessor left; promotions strictly improve
    champion_moves = tracking.alias_history(unique_name, "champion")
    assert [e["from"] for e in champion_moves[1:]] == [e["to"] for e in champion_moves[:-1]]
    promoted_scores = [score_of[e["to"]] for e in champion_moves]
    assert promoted_scores == sorted(set(promoted_scores)), promoted_scores
    rows = {r["version"]: r["gate"] for r in tracking.list_versions(unique_name)}
    for v, gate in rows.items():
        assert float(gate["score"]) == pytest.approx(score_of[v])
        if gate["decision"] == "rejected":
            assert score_of[v] <= float(gate["champion_score"])
    assert {e["to"] for e in champion_moves} == {v for v, g in rows.items() if g["decision"] == "promoted"}


def test_gate_waits_for_the_store_lock(sqlite_store, unique_name, tmp_path):
    """While another process holds the lock, a gate cannot read-and-move the champion."""
    with tracking.training_run(unique_name, {}, {}):
        pass
    script = (
        "import sys; from nnpipe import tracking\n"
        "try:\n    tracking.promote_if_better(sys.argv[1], 1)\n"
        "except tracking.LockTimeout as e:\n    print('LOCKED', e); sys.exit(3)\n"
    )
    with tracking.store_lock():
        out = subprocess.run([sys.executable, "-c", script, unique_name], capture_output=True, text=True,
                             env=child_env(sqlite_store, NNPIPE_LOCK_TIMEOUT="1"), timeout=300)
    assert out.returncode == 3, out.stdout + out.stderr[-2000:]
    assert "LOCKED" in out.stdout and "mlflow.db.nnpipe.lock" in out.stdout


def _start_at_once(n: int, name: str, env: dict[str, str], barrier: Path) -> list[dict]:
    barrier.mkdir()
    scores = [round(0.5 + 0.4 * ((7 * i) % n) / n, 3) for i in range(n)]  # a permutation: one best
    procs = [subprocess.Popen([sys.executable, START_WORKER, name, str(barrier), str(n), str(i), str(s)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, s in enumerate(scores)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-4000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def _check_outcome(name: str, results: list[dict]) -> None:
    n = len(results)
    assert sorted(r["version"] for r in results) == list(range(1, n + 1)), "each process got its own version"
    best = max(results, key=lambda r: r["score"])["version"]
    assert tracking.alias_version(name, "champion") == best
    moves = tracking.alias_history(name, "champion")
    assert [e["from"] for e in moves[1:]] == [e["to"] for e in moves[:-1]]


@pytest.mark.parametrize("n", [4, 8])
def test_processes_starting_at_once_on_a_brand_new_sqlite_store(n, tmp_path, monkeypatch):
    """No process sees a half-migrated database: distinct versions, a correct gate, an intact store."""
    import sqlite3

    db = tmp_path / "new" / "mlflow.db"  # neither the file nor its directory exists yet
    uri = f"sqlite:///{db}"
    results = _start_at_once(n, "fresh", child_env(uri), tmp_path / "barrier")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracking.configure(uri)
    _check_outcome("fresh", results)
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert not any(t.startswith("_alembic_tmp") for t in tables), tables
        assert len(con.execute("SELECT version_num FROM alembic_version").fetchall()) == 1
        assert con.execute("SELECT count(*) FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id "
                           "WHERE e.name != 'nnpipe-registry-history'").fetchone()[0] == n  # not the alias ledger
    finally:
        con.close()


@pytest.mark.server
@pytest.mark.parametrize("n", [4, 8])
def test_processes_starting_at_once_against_a_tracking_server(n, http_store, unique_name, tmp_path):
    env = child_env(http_store, NNPIPE_LOCK_DIR=str(tmp_path))  # the gate's lock for an http store
    _check_outcome(unique_name, _start_at_once(n, unique_name, env, tmp_path / "barrier"))
