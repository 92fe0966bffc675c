"""One of N processes that open the same tracking store at the same instant: used by test_concurrency.

Usage: python start_worker.py NAME BARRIER_DIR N WORKER_ID SCORE

Imports everything first, waits until all N are ready, then (all at once)
configures the store from MLFLOW_TRACKING_URI (a brand-new SQLite file is
created by whichever process gets the store lock first), logs a run with a
model, registers it and gates it. Prints one JSON object.
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

name, barrier, n, me, score = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
spec = build_spec("multiclass", 4, 3, (4,))
model = Model(spec, init_params(spec, np.random.default_rng(int(me))), classes=np.array([0, 1, 2]))
(barrier / f"ready-{me}").touch()
deadline = time.monotonic() + 300
while len(list(barrier.glob("ready-*"))) < n:
    if time.monotonic() > deadline:
        sys.exit("the other workers never got ready")
    time.sleep(0.005)

tracking.configure()
with tracking.training_run(name, {"worker": me}, {}) as run:
    tracking.log_final_metrics(run.info.run_id, {"accuracy": score})
    uri = tracking.log_model(run.info.run_id, model, np.zeros((2, 4)))
version = tracking.register_model(uri, name, run.info.run_id)
decision = tracking.promote_if_better(name, version)
print(json.dumps({"version": version, "score": score, "promoted": decision.promoted}))
