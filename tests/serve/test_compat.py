"""Protocol compatibility: the bodies `mlflow models serve` accepts give the same answers from `nnpipe serve`.

Both servers run as real processes on the same registered model (``@champion``).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.serve.conftest import post, split_body
from tests.tracking.helpers import MLFLOW, NNPIPE, child_env, free_port, start_server, stop

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def servers(registry, tmp_path_factory):
    logs = tmp_path_factory.mktemp("compat-logs")
    registry.set_alias("champion", 1)
    ports = {"mlflow": free_port(), "nnpipe": free_port()}
    cmds = {
        "mlflow": [MLFLOW, "models", "serve", "-m", f"models:/{registry.name}@champion", "--env-manager", "local",
                   "-h", "127.0.0.1", "-p", str(ports["mlflow"]), "-w", "1"],
        "nnpipe": [NNPIPE, "serve", registry.name, "--port", str(ports["nnpipe"])],
    }
    procs = {}
    try:
        for label, cmd in cmds.items():
            procs[label] = start_server(cmd, f"http://127.0.0.1:{ports[label]}/ping", logs / f"{label}.log",
                                        child_env(registry.uri), registry.root)
        yield {label: f"http://127.0.0.1:{port}" for label, port in ports.items()}
    finally:
        for proc in procs.values():
            stop(proc, graceful=False)


def test_same_bodies_same_predictions(registry, servers):
    X, cols = registry.splits.raw_test, registry.columns
    frame = pd.DataFrame(X, columns=cols)
    bodies = [
        split_body(X, cols),
        split_body(X[:, ::-1], cols[::-1]),
        {"dataframe_records": frame.to_dict(orient="records")},
        {"instances": frame.to_dict(orient="records")},
        {"inputs": frame.to_dict(orient="records")},
        {"inputs": {c: frame[c].tolist() for c in cols}},
        split_body(np.round(X).astype(int), cols),
        {**split_body(X, cols), "params": {"predict_proba": True}},
    ]
    for body in bodies:
        want = post(servers["mlflow"] + "/invocations", body)
        got = post(servers["nnpipe"] + "/invocations", body)
        assert want[0] == got[0] == 200, (body, want, got)
        w, g = want[2]["predictions"], got[2]["predictions"]
        if isinstance(w[0], dict):  # probabilities: equal up to float rounding
            np.testing.assert_allclose(pd.DataFrame(g)[list(w[0])].to_numpy(), pd.DataFrame(w).to_numpy(),
                                       rtol=1e-6, atol=1e-7)
        else:
            assert g == w, json.dumps(body)[:200]
        assert got[1].get("X-Model-Version") == "1" and got[2]["model_version"] == 1
    # CSV: mlflow models serve refuses it for nnpipe models (it reads the columns with the signature's
    # pandas dtypes, and the open 'any' type has none: "Failed to parse input"); nnpipe serve reads it
    csv = frame.to_csv(index=False).encode()
    want = post(servers["mlflow"] + "/invocations", csv, content_type="text/csv")
    got = post(servers["nnpipe"] + "/invocations", csv, content_type="text/csv")
    assert want[0] == 400 and "Failed to parse input" in want[2]["message"]
    assert got[0] == 200 and got[2]["predictions"] == post(servers["mlflow"] + "/invocations", bodies[0])[2]["predictions"]


def test_same_one_line_message_for_bad_input(registry, servers):
    cols = registry.columns
    rows = registry.splits.raw_test[:3].tolist()
    rows[2][1] = "n/a"
    body = {"dataframe_split": {"columns": cols, "data": rows}}
    want = post(servers["mlflow"] + "/invocations", body)
    got = post(servers["nnpipe"] + "/invocations", body)
    assert want[0] == got[0] == 400
    assert got[2]["message"] == want[2]["message"] == f"input column {cols[1]!r} row 2 is 'n/a', not a number"
