"""The fused single-process loop computes exactly what the general loop computes."""

import logging

import numpy as np
import pytest

from nnpipe import NetworkSpec, TrainConfig, init_params
from nnpipe.core import fused
from nnpipe.core.optimizers import get_optimizer
from nnpipe.core.problem import Problem
from nnpipe.core.training import choose_loop, fit


def data(head: str, n: int, dtype: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5)).astype(dtype)
    score = X[:, 0] - X[:, 1] + 0.3 * rng.normal(size=n)
    if head == "softmax":
        return X, np.digitize(score, [-0.5, 0.5])
    if head == "sigmoid":
        return X, (score > 0).astype(dtype)[:, None]
    return X, np.stack([score, X[:, 2]], axis=1).astype(dtype)


def both(spec: NetworkSpec, cfg: TrainConfig, X, Y, **kw):
    problem = Problem(spec, init_params(spec, 3), X, Y)
    return fit(problem, cfg, loop="general", **kw), fit(problem, cfg, loop="fused", **kw)


def assert_same(general, fused_):
    assert fused_.info["loop"] == "fused" and general.info["loop"] == "general"
    # Bit for bit: the parameters, the optimizer state and every logged number.
    assert fused_.theta.tobytes() == general.theta.tobytes()
    assert set(fused_.opt_state) == set(general.opt_state)
    for k in general.opt_state:
        np.testing.assert_array_equal(fused_.opt_state[k], general.opt_state[k], err_msg=k)
    for k in ("train/loss", "train/accuracy"):
        assert fused_.history.get(k) == general.history.get(k), k


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("optimizer", ["adam", "sgd", "momentum", "nesterov", "rmsprop"])
def test_equal_for_every_optimizer(dtype, optimizer):
    # 53 rows at batch 10: five full steps and a short one every epoch.
    X, y = data("softmax", 53, dtype)
    spec = NetworkSpec(5, (6, 4), ("relu", "tanh"), 3, dtype=dtype)
    cfg = TrainConfig(optimizer=optimizer, batch_size=10, epochs=4, seed=1, dtype=dtype)
    assert_same(*both(spec, cfg, X, y))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("head,activations", [
    ("softmax", ("sigmoid", "leaky_relu")),
    ("sigmoid", ("relu", "identity")),
    ("identity", ("tanh", "relu")),
])
def test_equal_for_every_head_and_activation(dtype, head, activations):
    X, Y = data(head, 41, dtype, seed=2)
    spec = NetworkSpec(5, (7, 3), activations, Y.shape[1] if Y.ndim == 2 else 3, head=head, dtype=dtype)
    cfg = TrainConfig(optimizer="adam", batch_size=8, epochs=3, seed=4, dtype=dtype)
    assert_same(*both(spec, cfg, X, Y))


def test_equal_with_l2_clipping_and_blocks(monkeypatch):
    # Blocks of 24 rows (3 batches of 8) over 100 rows: the gather, the one-hot
    # targets and the loss indices are rebuilt per block, the last one short.
    monkeypatch.setattr(fused, "BLOCK_ROWS", 24)
    X, y = data("softmax", 100, "float64", seed=5)
    spec = NetworkSpec(5, (8,), ("relu",), 3, dtype="float64")
    cfg = TrainConfig(optimizer="adam", batch_size=8, epochs=3, seed=0, l2=1e-3, clip_norm=0.05, dtype="float64")
    general, fused_ = both(spec, cfg, X, y)
    assert_same(general, fused_)
    assert general.history["train/loss"][-1] < general.history["train/loss"][0]


def test_equal_when_resuming_optimizer_state():
    X, y = data("softmax", 30, "float32", seed=6)
    spec = NetworkSpec(5, (4,), ("relu",), 3)
    cfg = TrainConfig(optimizer="adam", batch_size=10, epochs=2, seed=0)
    problem = Problem(spec, init_params(spec, 0), X, y)
    first = fit(problem, cfg, loop="general")
    resumed = Problem(spec, first.theta, X, y)
    assert_same(fit(resumed, cfg, opt_state=first.opt_state, loop="general"),
                fit(resumed, cfg, opt_state=first.opt_state, loop="fused"))
    assert int(first.opt_state["t"]) == 6  # the caller's state was copied, not advanced


def test_batch_larger_than_data_is_one_step():
    X, y = data("softmax", 7, "float32")
    spec = NetworkSpec(5, (4,), ("relu",), 3)
    assert_same(*both(spec, TrainConfig(optimizer="adam", batch_size=64, epochs=3, seed=0), X, y))


def test_adam_stepper_matches_step_bit_for_bit():
    rng = np.random.default_rng(0)
    theta = rng.normal(size=50).astype(np.float32)
    opt = get_optimizer("adam", beta1=0.8, beta2=0.99)
    ref_theta, ref_state = theta.copy(), opt.init(theta)
    theta2, state2 = theta.copy(), opt.init(theta)
    grad, step = opt.stepper(theta2, state2)
    for t in range(5):
        g = rng.normal(size=50).astype(np.float32)
        opt.step(ref_theta, g, ref_state, 0.01 * (t + 1), inplace=True)
        grad[...] = g
        step(0.01 * (t + 1))
    assert theta2.tobytes() == ref_theta.tobytes()
    assert state2["m"].tobytes() == ref_state["m"].tobytes() and state2["v"].tobytes() == ref_state["v"].tobytes()
    assert int(state2["t"]) == 5


def test_auto_picks_fused_and_logs_it(caplog):
    X, y = data("softmax", 20, "float32")
    spec = NetworkSpec(5, (4,), ("relu",), 3)
    with caplog.at_level(logging.INFO, logger="nnpipe"):
        result = fit(Problem(spec, init_params(spec, 0), X, y), TrainConfig(batch_size=10, epochs=1))
    assert result.info["loop"] == "fused"
    assert "single-process loop: fused" in caplog.text
    with pytest.raises(ValueError, match="loop must be one of .*'fast'"):
        choose_loop("fast")
