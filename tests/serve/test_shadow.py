"""The shadow comparison on its own (no store): labels agree or not, regression values differ by how much."""

from __future__ import annotations

import numpy as np
import pytest

from nnpipe import TrainConfig
from nnpipe.api import train
from nnpipe.data import load_dataset, split_and_scale
from nnpipe.serve.metrics import ServeMetrics
from nnpipe.serve.served import ServedVersion
from nnpipe.serve.shadow import ShadowScorer
from nnpipe.tracking.serving import VerifiedVersion


class Holder:
    """Stands where the shadow alias's watcher stands: whatever version it holds now."""

    def __init__(self, model, version: int):
        self.current = ServedVersion(VerifiedVersion("m", version, model, None, None))


@pytest.mark.parametrize("dataset", ["diabetes", "iris"])
def test_shadow_compares_with_the_served_predictions(dataset):
    splits = split_and_scale(load_dataset(dataset), test_size=0.2, val_size=0.1, seed=0)
    served = train(splits, TrainConfig(epochs=2, seed=1), hidden=(8,)).model
    shadow = train(splits, TrainConfig(epochs=3, seed=2), hidden=(8,)).model
    scorer = ShadowScorer(Holder(shadow, 2), ServeMetrics())
    X = splits.raw_test
    scorer.score(X[:10], served.predict(X[:10]), served_version=1)
    scorer.score(X[10:], served.predict(X[10:]), served_version=1)
    scorer.score(X, served.predict(X), served_version=2)  # the shadow is the served version now: not compared
    totals = scorer.snapshot()
    a, b = served.predict(X), shadow.predict(X)
    if dataset == "iris":
        assert totals.kind == "agreement" and totals.value == pytest.approx(np.mean(a == b))
    else:
        assert totals.kind == "mean_abs_diff"
        assert totals.value == pytest.approx(np.mean(np.abs(a.ravel() - b.ravel())))
    assert totals.rows == len(X) and totals.requests == 2
