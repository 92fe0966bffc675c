"""Hand-worked first steps of every optimizer, schedules, and purity of ``step``."""

import math

import numpy as np
import pytest

from nnpipe.core.optimizers import OPTIMIZERS, get_optimizer
from nnpipe.core.schedules import get_schedule

THETA = np.array([1.0, -2.0, 0.5])
GRAD = np.array([0.5, -1.0, 2.0])
LR = 0.1


def test_sgd_first_step():
    opt = get_optimizer("sgd")
    theta, _ = opt.step(THETA, GRAD, opt.init(THETA), LR)
    np.testing.assert_allclose(theta, [0.95, -1.9, 0.3])


def test_momentum_and_nesterov_first_two_steps():
    opt = get_optimizer("momentum", momentum=0.9)
    s = opt.init(THETA)
    t1, s = opt.step(THETA, GRAD, s, LR)  # v = g
    np.testing.assert_allclose(t1, THETA - 0.1 * GRAD)
    t2, s = opt.step(t1, GRAD, s, LR)  # v = 0.9 g + g = 1.9 g
    np.testing.assert_allclose(t2, t1 - 0.1 * 1.9 * GRAD)
    nes = get_optimizer("nesterov", momentum=0.9)
    n1, _ = nes.step(THETA, GRAD, nes.init(THETA), LR)  # g + mu * v = 1.9 g
    np.testing.assert_allclose(n1, THETA - 0.1 * 1.9 * GRAD)


def test_adam_first_two_steps_match_the_paper():
    opt = get_optimizer("adam", beta1=0.9, beta2=0.999, eps=1e-8)
    s = opt.init(THETA)
    t1, s = opt.step(THETA, GRAD, s, LR)
    # Step 1: m_hat = g, v_hat = g^2, so the update is lr * g / (|g| + eps).
    np.testing.assert_allclose(t1, THETA - LR * GRAD / (np.abs(GRAD) + 1e-8), rtol=1e-12)
    g2 = np.array([-0.5, 0.25, 1.0])
    t2, s = opt.step(t1, g2, s, LR)
    m = 0.9 * 0.1 * GRAD + 0.1 * g2
    v = 0.999 * 0.001 * GRAD**2 + 0.001 * g2**2
    m_hat, v_hat = m / (1 - 0.9**2), v / (1 - 0.999**2)
    np.testing.assert_allclose(t2, t1 - LR * m_hat / (np.sqrt(v_hat) + 1e-8), rtol=1e-10)
    assert int(s["t"]) == 2


def test_rmsprop_first_step():
    opt = get_optimizer("rmsprop", rho=0.9, eps=1e-7)
    t1, s = opt.step(THETA, GRAD, opt.init(THETA), LR)
    v = 0.1 * GRAD**2
    np.testing.assert_allclose(t1, THETA - LR * GRAD / (np.sqrt(v) + 1e-7))
    np.testing.assert_allclose(s["v"], v)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_step_is_pure_unless_inplace(name):
    opt = get_optimizer(name)
    theta, state = THETA.copy(), opt.init(THETA)
    before = {k: v.copy() for k, v in state.items()}
    new_theta, new_state = opt.step(theta, GRAD, state, LR)
    np.testing.assert_array_equal(theta, THETA)
    for k in before:
        np.testing.assert_array_equal(state[k], before[k])
    assert not np.array_equal(new_theta, THETA)
    same_theta, _ = opt.step(theta, GRAD, state, LR, inplace=True)
    assert same_theta is theta
    np.testing.assert_allclose(theta, new_theta)


def test_unknown_optimizer_and_hyperparameter_are_named():
    with pytest.raises(ValueError, match="'adamw'"):
        get_optimizer("adamw")
    with pytest.raises(ValueError, match="momentum"):
        get_optimizer("adam", momentum=0.9)


def test_schedules():
    assert get_schedule("constant", 0.1, 10)(7) == 0.1
    step = get_schedule("step", 1.0, 100, step_size=10, gamma=0.5)
    assert [step(e) for e in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]
    cos = get_schedule("cosine", 1.0, 10, min_lr=0.0)
    assert cos(0) == 1.0 and cos(5) == pytest.approx(0.5) and cos(10) == pytest.approx(0.0)
    assert cos(2.5) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    with pytest.raises(ValueError, match="'linear'"):
        get_schedule("linear", 0.1, 10)
