"""A training process that finishes at the same moment as another: used by test_concurrency.

Usage: python gate_worker.py NAME BARRIER_DIR WORKER_ID SCORE [SCORE ...]

Logs one run (with a model) per score first, waits until every worker is
ready, then registers and gates its versions as fast as it can. Prints one
JSON list of {"version", "score", "promoted"}.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

from nnpipe import tracking
from nnpipe.api import build_spec
from nnpipe.core.network import init_params
from nnpipe.model import Model

name, barrier, me, scores = sys.argv[1], Path(sys.argv[2]), sys.argv[3], [float(s) for s in sys.argv[4:]]
tracking.configure()
spec = build_spec("multiclass", 4, 3, (4,))
ready = []
for i, score in enumerate(scores):
    model = Model(spec, init_params(spec, np.random.default_rng(i)), classes=np.array([0, 1, 2]))
    with tracking.training_run(name, {"worker": me, "i": i}, {}) as run:
        tracking.log_final_metrics(run.info.run_id, {"accuracy": score})
        ready.append((run.info.run_id, tracking.log_model(run.info.run_id, model, np.zeros((2, 4))), score))

(barrier / f"ready-{me}").touch()
deadline = time.monotonic() + 300
while len(list(barrier.glob("ready-*"))) < 2:
    if time.monotonic() > deadline:
        sys.exit("the other worker never got ready")
    time.sleep(0.01)

out = []
for run_id, uri, score in ready:
    version = tracking.register_model(uri, name, run_id)
    decision = tracking.promote_if_better(name, version)
    out.append({"version": version, "score": score, "promoted": decision.promoted})
print(json.dumps(out))
