"""Small shared pieces of the distributed tests."""

from __future__ import annotations

import numpy as np
from distributed import LocalCluster
from sklearn.datasets import load_digits

from nnpipe.network import NetworkSpec, init_params


def local_cluster(n_workers: int = 2) -> LocalCluster:
    """A real cluster of ``n_workers`` single-threaded worker processes, no dashboard."""
    return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0")


def small_net(dtype: str = "float64", n_in: int = 8, n_out: int = 3):
    spec = NetworkSpec(n_in, (16,), ("relu",), n_out, dtype=dtype)
    return spec, init_params(spec, 0)


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def digits(seed: int = 0):
    """Digits split 80/20 by a seeded permutation and standardised: ``X_train, y_train, X_test, y_test``."""
    d = load_digits()
    idx = np.random.default_rng(seed).permutation(len(d.target))
    X, y = d.data[idx], d.target[idx]
    n = int(0.8 * len(y))
    mean, std = X[:n].mean(0), X[:n].std(0) + 1e-8
    return (X[:n] - mean) / std, y[:n], (X[n:] - mean) / std, y[n:]
