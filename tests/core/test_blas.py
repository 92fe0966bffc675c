"""BLAS threads during training: one for small matrix products, the library's choice otherwise, the user's if set."""

from __future__ import annotations

import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from nnpipe.blas import GEMM_THREAD_MIN, THREAD_ENV, largest_product, step_threads
from nnpipe.core.network import NetworkSpec


def blas_threads() -> list[int]:
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


@pytest.fixture
def two_threads(monkeypatch):
    for name in THREAD_ENV:
        monkeypatch.delenv(name, raising=False)
    with threadpool_limits(limits=2, user_api="blas"):
        if blas_threads() != [2] * len(blas_threads()):
            pytest.skip("this BLAS cannot be set to 2 threads")
        yield


def test_a_small_network_trains_with_one_blas_thread_then_the_limit_is_undone(two_threads):
    small = NetworkSpec(40, (64, 32), "relu", 10)
    assert largest_product(small, 256) == 256 * 40 * 64 < GEMM_THREAD_MIN
    with step_threads(small, 256) as decision:
        assert set(blas_threads()) == {1}
    assert decision.startswith("1 thread") and "655,360" in decision
    assert set(blas_threads()) == {2}


def test_a_large_product_keeps_the_library_default(two_threads):
    big = NetworkSpec(64, (256, 256), "relu", 10)
    with step_threads(big, 256) as decision:
        assert set(blas_threads()) == {2}
    assert decision.startswith("library default")


def test_a_thread_count_the_user_set_wins(two_threads, monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    with step_threads(NetworkSpec(4, (8,), "relu", 3), 32) as decision:
        assert set(blas_threads()) == {2}
    assert decision == "as set by OPENBLAS_NUM_THREADS=2"


def test_fit_reports_its_decision(two_threads):
    import numpy as np

    from nnpipe.config import TrainConfig
    from nnpipe.core.network import init_params
    from nnpipe.core.problem import Problem
    from nnpipe.core.training import fit

    spec = NetworkSpec(4, (8,), "relu", 3)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((64, 4)).astype(np.float32), rng.integers(0, 3, 64)
    r = fit(Problem(spec, init_params(spec, 0), X, y), TrainConfig(epochs=1, batch_size=16))
    assert r.info["blas_threads"].startswith("1 thread")
