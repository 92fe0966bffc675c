"""The per-shard trainer on its own, in this process (as dask-glm tests ``local_update``): no cluster."""

from __future__ import annotations

import numpy as np
import pytest

from nnpipe.config import TrainConfig
from nnpipe.core.network import Network
from nnpipe.distributed.trainer import ShardTrainer, build_shard, unpack_shard
from tests.distributed.helpers import small_net


def make(X, y, lo, hi, n_total, **cfg):
    spec, theta0 = small_net("float64")
    config = TrainConfig(dtype="float64", **cfg)
    return ShardTrainer(spec.to_dict(), build_shard(X[lo:hi], y[lo:hi], lo), config, 0, n_total), spec, theta0


def test_local_round_takes_plain_sgd_steps_on_its_shard(data):
    X, y = data
    # A batch as large as the shard: every step is one gradient step on the same 100 rows.
    tr, spec, theta0 = make(X, y, 100, 200, len(X), optimizer="sgd", batch_size=100, l2=1e-3)
    out, loss_sum, rows, correct, secs = tr.local_round(theta0, 3, 0.2)
    out = out.copy()  # the trainer's own buffer, reused by its next round
    net, want = Network(spec), theta0.copy()
    for _ in range(3):
        _, grad = net.loss_and_grad(want, X[100:200], y[100:200], 1e-3)
        want -= 0.2 * grad
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-14)
    assert rows == 300 and 0 <= correct <= 300 and loss_sum > 0 and secs >= 0
    # As a delta, one more step from theta0 is one step's worth of change.
    delta = tr.local_round(theta0, 1, 0.2, True)[0]
    _, grad = net.loss_and_grad(theta0, X[100:200], y[100:200], 1e-3)
    np.testing.assert_allclose(delta, -0.2 * grad, rtol=1e-10, atol=1e-14)


def test_sync_grad_is_the_shards_part_of_the_global_batch(data):
    X, y = data
    lo, hi = 0, 250
    tr, spec, theta0 = make(X, y, lo, hi, len(X), batch_size=100, seed=3)
    perm = np.random.default_rng(3).permutation(len(X))
    batch = perm[:100]
    mine = batch[(batch >= lo) & (batch < hi)]
    g, loss_rows, rows, _, _ = tr.sync_grad(theta0, 0, 0)
    _, want = Network(spec).loss_and_grad(theta0, X[mine], y[mine], 0.0)
    assert rows == len(mine)
    np.testing.assert_allclose(g, want, rtol=1e-10)
    # A larger global batch (the warm-up epochs of local-sgd) re-cuts the same permutation.
    g2, _, rows2, _, _ = tr.sync_grad(theta0, 0, 0, 200)
    assert rows2 == int(((perm[:200] >= lo) & (perm[:200] < hi)).sum())


def test_state_round_trip_continues_the_stream_exactly(data):
    X, y = data
    a, _, theta0 = make(X, y, 0, 300, len(X), batch_size=32, seed=1)
    b, _, _ = make(X, y, 0, 300, len(X), batch_size=32, seed=1)
    a.local_round(theta0, 4, 0.01)
    b.set_state(a.get_state())
    np.testing.assert_array_equal(a.local_round(theta0, 5, 0.01)[0], b.local_round(theta0, 5, 0.01)[0])
    # An optimizer state alone (handed over after warm-up epochs) leaves the stream where it is.
    before = b.pos
    b.set_state({"opt": a.get_state()["opt"]})
    assert b.pos == before


def test_unpack_shard_names_what_it_got():
    with pytest.raises(TypeError, match="got list"):
        unpack_shard([1, 2])


def test_a_pass_gathers_batches_by_index_without_a_copy_of_the_shard():
    """The local stream's batches are the seeded permutation's rows, and a pass allocates batch-sized buffers only."""
    import tracemalloc

    rng = np.random.default_rng(0)
    n = 20_000
    X, y = rng.standard_normal((n, 8)), rng.integers(0, 3, n)
    tr, spec, theta0 = make(X, y, 0, n, n, optimizer="sgd", batch_size=500, seed=5)
    perm = np.random.default_rng(np.random.SeedSequence(5, spawn_key=(0,))).permutation(n)
    for step in range(3):  # the same rows, in the same order, as slicing a shuffled copy
        Xb, Yb = tr._next_batch(500)
        np.testing.assert_array_equal(Xb, X[perm[500 * step : 500 * (step + 1)]])
        np.testing.assert_array_equal(Yb, y[perm[500 * step : 500 * (step + 1)]])
    tracemalloc.start()
    try:
        tr.local_round(theta0, 2 * n // 500, 0.01)  # two whole passes, two fresh permutations
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # A permutation (8 bytes a row) and batch buffers: far below the shard (1.28 MB of X, 160 kB of y).
    # tracemalloc counts every thread of this process (the package's Dask client and xdist's threads
    # allocate meanwhile: 597 kB was seen once), so the bound sits below one copy of X, not at the buffers.
    assert peak < 0.75 * (X.nbytes + y.nbytes), peak


def odd_offset(a: np.ndarray) -> np.ndarray:
    """``a``'s values in a view 2 bytes into a buffer, as Dask delivers arrays packed into one message."""
    buf = np.empty(a.nbytes + 2, dtype=np.uint8)
    out = buf[2:].view(a.dtype).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned
    return out


def test_a_shard_delivered_at_an_odd_offset_trains_the_same_without_copying_it_per_batch(data):
    """``np.take`` copies a misaligned source whole on every call; the trainer aligns its shard once."""
    import tracemalloc

    rng = np.random.default_rng(1)
    n = 20_000
    X, y = rng.standard_normal((n, 8)), rng.integers(0, 3, n)
    spec, theta0 = small_net("float64")
    config = TrainConfig(dtype="float64", optimizer="sgd", batch_size=100, seed=3)
    plain = ShardTrainer(spec.to_dict(), build_shard(X, y, 0), config, 0, n)
    odd = ShardTrainer(spec.to_dict(), {"X": odd_offset(X), "Y": odd_offset(y), "lo": 0}, config, 0, n)
    assert odd.X.flags.aligned and odd.Y.flags.aligned
    np.testing.assert_array_equal(odd.local_round(theta0, 5, 0.1)[0], plain.local_round(theta0, 5, 0.1)[0])
    tracemalloc.start()
    try:
        odd.local_round(theta0, 50, 0.01)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.4 * X.nbytes, peak  # a copy of X per batch would be 1.28 MB


def test_a_problem_aligns_arrays_at_an_odd_offset_and_trains_the_same(data):
    from nnpipe.core.problem import Problem
    from nnpipe.core.training import fit

    X, y = data
    spec, theta0 = small_net("float64")
    cfg = TrainConfig(dtype="float64", epochs=2, batch_size=64, seed=1)
    odd = Problem(spec, theta0, odd_offset(np.asarray(X, dtype="float64")), odd_offset(y))
    assert odd.X.flags.aligned and odd.Y.flags.aligned
    np.testing.assert_array_equal(fit(odd, cfg).theta, fit(Problem(spec, theta0, X, y), cfg).theta)
