"""A real cluster for the distributed tests: 2 worker processes, 1 thread each.

Tests that kill or add workers start their own cluster; the rest share this one.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_classification

from tests.distributed.helpers import local_cluster

distributed = pytest.importorskip("distributed")


# package, not session: idle, its worker processes and scheduler take ~10% of a core each, which the
# rest of the suite (flows, production, serve, ...) would pay until the very end
@pytest.fixture(scope="package")
def cluster():
    with local_cluster(2) as c:
        yield c


@pytest.fixture(scope="package")
def client(cluster):
    with distributed.Client(cluster) as c:
        c.wait_for_workers(2)
        yield c


@pytest.fixture(scope="session")
def data():
    """A small 3-class problem: X (600, 8) float64 scaled, y (600,) int."""
    X, y = make_classification(n_samples=600, n_features=8, n_informative=5, n_classes=3, random_state=0)
    X = (X - X.mean(0)) / X.std(0)
    return X, y.astype(np.intp)
