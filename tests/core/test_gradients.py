"""Finite-difference checks of every activation, head and loss, in float64."""

import numpy as np
import pytest

from nnpipe import Network, NetworkSpec, init_params
from nnpipe.core.activations import ACTIVATIONS
from nnpipe.core.losses import HEADS


def _targets(head: str, rng: np.random.Generator, n: int, n_out: int) -> np.ndarray:
    if head == "softmax":
        return rng.integers(0, n_out, n)
    if head == "sigmoid":
        return rng.integers(0, 2, (n, 1)).astype(float)
    return rng.normal(size=(n, n_out))


def _numeric_grad(net, theta, X, Y, l2, h=1e-6):
    grad = np.empty_like(theta)
    for i in range(theta.size):
        e = np.zeros_like(theta)
        e[i] = h
        grad[i] = (net.loss(theta + e, X, Y, l2) - net.loss(theta - e, X, Y, l2)) / (2 * h)
    return grad


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_gradient_matches_finite_differences(head, activation):
    rng = np.random.default_rng(7)
    n_out = 1 if head == "sigmoid" else 3
    spec = NetworkSpec(5, (6, 4), (activation, activation), n_out, head=head, dtype="float64")
    net = Network(spec)
    # Nudge away from zero so the ReLU kinks are not sampled by the difference quotient.
    theta = init_params(spec, 1) + rng.normal(0, 0.05, spec.n_params)
    X = rng.normal(size=(9, 5))
    Y = _targets(head, rng, 9, n_out)
    for l2 in (0.0, 0.3):
        loss, grad = net.loss_and_grad(theta, X, Y, l2=l2)
        assert loss == pytest.approx(net.loss(theta, X, Y, l2), rel=1e-12)
        numeric = _numeric_grad(net, theta, X, Y, l2)
        rel = np.linalg.norm(grad - numeric) / np.linalg.norm(grad + numeric)
        assert rel < 1e-6, (head, activation, l2, rel)


def test_loss_values_match_their_definitions():
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(4, 3))
    P = np.exp(Z) / np.exp(Z).sum(1, keepdims=True)
    y = np.array([0, 2, 1, 2])
    assert HEADS["softmax"].loss(HEADS["softmax"].forward(Z.copy()), y) == pytest.approx(
        -np.mean(np.log(P[np.arange(4), y]))
    )
    z = rng.normal(size=(5, 1))
    t = np.array([[0.0], [1.0], [1.0], [0.0], [1.0]])
    p = 1 / (1 + np.exp(-z))
    assert HEADS["sigmoid"].loss(HEADS["sigmoid"].forward(z), t) == pytest.approx(
        -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))
    )
    assert HEADS["identity"].loss(z, t) == pytest.approx(np.mean((z - t) ** 2))


def test_softmax_is_stable_for_huge_logits():
    Z = np.array([[1000.0, 0.0, -1000.0], [-5e4, 5e4, 0.0]])
    P = HEADS["softmax"].forward(Z)
    assert np.isfinite(P).all() and np.allclose(P.sum(1), 1)
    assert HEADS["softmax"].loss(P, np.array([2, 0])) < np.inf
