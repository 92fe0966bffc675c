"""Scale-out on a real cluster: 8 worker processes, local SGD with the default settings, digits."""

from __future__ import annotations

import distributed
import pytest

from nnpipe.config import TrainConfig
from nnpipe.core.network import NetworkSpec, init_params
from nnpipe.core.problem import Problem
from nnpipe.core.training import fit
from nnpipe.distributed import fit_distributed
from tests.distributed.helpers import digits, local_cluster

pytestmark = pytest.mark.cluster


def test_local_sgd_at_8_workers_reaches_sync_accuracy_with_the_defaults():
    Xtr, ytr, Xte, yte = digits(0)
    spec = NetworkSpec(64, (64,), ("relu",), 10, dtype="float32")
    theta0 = init_params(spec, 0)
    kw = dict(epochs=40, batch_size=32, seed=0, dtype="float32")
    # sync equals single-process training up to rounding (test_sync.py), and is 8 round trips a step here.
    problem = Problem(spec, theta0, Xtr, ytr, (Xte, yte))
    ref = fit(problem, TrainConfig(**kw))
    with local_cluster(8) as cluster, distributed.Client(cluster) as client:
        client.wait_for_workers(8, timeout=120)
        out = fit_distributed(problem, TrainConfig(mode="local-sgd", workers=8, **kw), client=client)
    assert out.info["workers"] == 8
    sync_acc, local_acc = ref.history["val/accuracy"][-1], out.history["val/accuracy"][-1]
    assert local_acc >= sync_acc - 0.015, f"local-sgd {local_acc:.4f} vs sync {sync_acc:.4f}"
    # And no later than sync to 95% of sync's final accuracy (the sync warm-up epochs: epoch 4 vs 6 here).
    level = 0.95 * sync_acc
    first = [next(i for i, a in enumerate(h["val/accuracy"]) if a >= level) for h in (ref.history, out.history)]
    assert first[1] <= first[0], f"epochs to 95% of sync: local-sgd {first[1] + 1}, sync {first[0] + 1}"
    assert out.history["dist/outer_step_norm"][-1] > 0
