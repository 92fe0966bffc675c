"""Small shared pieces of the distributed tests."""

from __future__ import annotations

import numpy as np
from distributed import LocalCluster

from nnpipe.core.network import NetworkSpec, init_params


def local_cluster(n_workers: int = 2) -> LocalCluster:
    """A real cluster of ``n_workers`` single-threaded worker processes, no dashboard."""
    return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0")


def small_net(dtype: str = "float64", n_in: int = 8, n_out: int = 3):
    spec = NetworkSpec(n_in, (16,), ("relu",), n_out, dtype=dtype)
    return spec, init_params(spec, 0)


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def digits(seed: int = 0):
    """Digits through the library's own split (80/20, stratified, standardised): ``X_train, y_train, X_test, y_test``."""
    from nnpipe.data import load_dataset, split_and_scale

    sp = split_and_scale(load_dataset("digits"), test_size=0.2, val_size=0.0, seed=seed)
    return sp.X_train, sp.y_train, sp.X_test, sp.y_test
