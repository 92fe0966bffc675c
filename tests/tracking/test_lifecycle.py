"""Train twice, gate, promote, roll back; after each move a fresh process loads ``@champion``.

Runs against a SQLite store and against a real ``mlflow server`` over HTTP.
"""

from __future__ import annotations

import pytest

from nnpipe import tracking
from tests.tracking.helpers import STRONG, WEAK, assert_serves, train_logged


def test_train_gate_promote_rollback_serves_the_right_weights(store, unique_name, iris_splits, tmp_path):
    ds, splits = iris_splits
    name = unique_name
    champion = f"models:/{name}@champion"

    # 1. first (weak) model: no champion yet, so the gate promotes it
    v1, weak, _ = train_logged(name, ds, splits, experiment=name, **WEAK)
    d1 = tracking.promote_if_better(name, v1)
    assert d1.promoted and d1.champion_version is None and d1.reason.startswith("no champion")
    assert_serves(champion, store, weak, splits, tmp_path)

    # 2. a better model beats it
    v2, strong, _ = train_logged(name, ds, splits, experiment=name, **STRONG)
    assert v2 == v1 + 1
    d2 = tracking.promote_if_better(name, v2)
    assert d2.score > d2.champion_score, d2
    assert d2.promoted and d2.champion_version == v1
    assert_serves(champion, store, strong, splits, tmp_path)

    # 3. the weak configuration again: gated out, champion stays, decision recorded on the version
    v3, weak_again, _ = train_logged(name, ds, splits, experiment=name, **WEAK)
    d3 = tracking.promote_if_better(name, v3)
    assert not d3.promoted and d3.champion_version == v2 and d3.score < d3.champion_score
    rows = {r["version"]: r for r in tracking.list_versions(name)}
    assert rows[v3]["gate"]["decision"] == "rejected"
    assert float(rows[v3]["gate"]["score"]) == pytest.approx(d3.score, abs=1e-6)
    assert float(rows[v3]["gate"]["champion_score"]) == pytest.approx(d2.score, abs=1e-6)
    assert rows[v2]["gate"]["decision"] == "promoted"
    assert rows[v3]["aliases"] == ["candidate"] and rows[v2]["aliases"] == ["champion"]
    assert tracking.alias_version(name, "champion") == v2

    # 4. a human promotes v1 anyway; rollback (default) returns to the previous champion v2
    assert tracking.promote(name, v1, reason="try the small one") == v2
    assert_serves(champion, store, weak, splits, tmp_path)
    assert tracking.rollback(name, reason="v1 is worse in production", actor="oncall") == v2
    assert_serves(champion, store, strong, splits, tmp_path)

    # 5. the history says who moved what, when and why
    moves = [(e["action"], e["from"], e["to"]) for e in tracking.alias_history(name, "champion")]
    assert moves == [("gate", None, v1), ("gate", v1, v2), ("promote", v2, v1), ("rollback", v1, v2)]
    last = tracking.alias_history(name)[-1]
    assert last["actor"] == "oncall" and last["reason"] == "v1 is worse in production" and last["time"]
    candidates = [(e["from"], e["to"]) for e in tracking.alias_history(name, "candidate")]
    assert candidates == [(None, v1), (v1, v2), (v2, v3)]

    # 6. unknown names and versions are clear errors on this store too
    with pytest.raises(tracking.UnknownModelError, match=f"no registered model named '{name}-x'"):
        tracking.rollback(f"{name}-x")
    with pytest.raises(tracking.UnknownVersionError, match=f"model '{name}' has no version 42; versions: \\[1, 2, 3\\]"):
        tracking.promote_if_better(name, 42)
