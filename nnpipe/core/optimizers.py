"""Optimizers on the flat parameter vector.

``step(theta, grad, state, lr) -> (theta, state)`` is pure by default: it
returns new arrays and leaves its inputs alone. Training loops that own their
buffers pass ``inplace=True`` and the same arithmetic runs without copies;
there is one implementation of each rule either way. State is a dict of plain
arrays (the step count included), so it can be checkpointed and shipped to a
Dask worker as is.

The Adam update is PyTorch's (Kingma & Ba, Algorithm 1): the bias corrections
are applied to ``m`` and ``v`` and ``eps`` is added to ``sqrt(v_hat)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

State = dict[str, np.ndarray]
Stepper = Callable[[float], None]


def clip_by_global_norm(grad: np.ndarray, max_norm: float | None) -> np.ndarray:
    """Scale ``grad`` in place so its L2 norm is at most ``max_norm``."""
    if max_norm is not None:
        norm = float(np.sqrt(np.dot(grad, grad)))
        if norm > max_norm:
            grad *= max_norm / norm
    return grad


def _tick(state: State) -> int:
    """Count one more step in ``state`` and return the new count."""
    t = int(state["t"]) + 1
    state["t"] = np.array(t)  # a fresh 0-d array is cheaper than an in-place add
    return t


@dataclass(frozen=True)
class Optimizer:
    """Base class: hyperparameters are fields, arrays live in the state."""

    name = "base"

    def init(self, theta: np.ndarray) -> State:
        """Fresh state for parameters shaped like ``theta``."""
        return {"t": np.zeros((), dtype=np.int64)}

    def step(
        self, theta: np.ndarray, grad: np.ndarray, state: State, lr: float, inplace: bool = False
    ) -> tuple[np.ndarray, State]:
        """One update; ``grad`` is never modified.

        Parameters
        ----------
        theta, grad : ndarray of shape (n_params,)
        state : dict of ndarray
            As returned by :meth:`init` or a previous :meth:`step`.
        lr : float
            Learning rate for this step.
        inplace : bool
            Update ``theta`` and ``state`` in place (the caller owns them).
        """
        if not inplace:
            theta = theta.copy()
            state = {k: v.copy() for k, v in state.items()}
        self._update(theta, grad, state, lr, _tick(state))
        return theta, state

    def _update(self, theta: np.ndarray, grad: np.ndarray, state: State, lr: float, t: int) -> None:
        raise NotImplementedError

    def stepper(self, theta: np.ndarray, state: State) -> tuple[np.ndarray, Stepper]:
        """A gradient buffer and ``step(lr)``, the in-place update of ``theta`` and ``state`` from it.

        ``step(lr)`` does bit for bit what ``step(theta, grad, state, lr,
        inplace=True)`` does; a rule may lay its buffers out so the update
        takes fewer calls (the single-process fused loop calls it every step).
        ``state`` may be rebound to those buffers, so the caller must own it.
        """
        grad = np.empty_like(theta)

        def step(lr: float) -> None:
            self._update(theta, grad, state, lr, _tick(state))

        return grad, step

    def config(self) -> dict[str, Any]:
        return {"optimizer": self.name, **{k: getattr(self, k) for k in self.__dataclass_fields__}}


@dataclass(frozen=True)
class SGD(Optimizer):
    name = "sgd"

    def _update(self, theta, grad, state, lr, t):
        theta -= lr * grad


@dataclass(frozen=True)
class Momentum(Optimizer):
    """Heavy-ball momentum, PyTorch's form: ``v = mu*v + g``; Nesterov looks ahead."""

    momentum: float = 0.9
    nesterov: bool = False
    name = "momentum"

    def init(self, theta):
        return {**super().init(theta), "velocity": np.zeros_like(theta)}

    def _update(self, theta, grad, state, lr, t):
        v = state["velocity"]
        v *= self.momentum
        v += grad
        if self.nesterov:
            theta -= lr * (grad + self.momentum * v)
        else:
            theta -= lr * v


@dataclass(frozen=True)
class Adam(Optimizer):
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    name = "adam"

    def init(self, theta):
        return {**super().init(theta), "m": np.zeros_like(theta), "v": np.zeros_like(theta)}

    def _update(self, theta, grad, state, lr, t):
        m, v = state["m"], state["v"]
        # One scratch array and in-place passes: the update costs ~10% of a
        # 256-row step of a 85k-parameter network, so temporaries matter.
        tmp = grad - m
        tmp *= 1 - self.beta1
        m += tmp  # m = b1*m + (1-b1)*g
        np.multiply(grad, grad, out=tmp)
        tmp -= v
        tmp *= 1 - self.beta2
        v += tmp  # v = b2*v + (1-b2)*g**2
        self._apply(theta, m, v, tmp, lr, t)

    def _apply(self, theta: np.ndarray, m: np.ndarray, v: np.ndarray, tmp: np.ndarray, lr: float, t: int) -> None:
        """``theta -= lr * m_hat / (sqrt(v_hat) + eps)`` from the updated moments (``tmp`` is scratch)."""
        # lr/b1 * m / (sqrt(v)/sqrt(b2) + eps) == lr*sqrt(b2)/b1 * m / (sqrt(v) + eps*sqrt(b2))
        # with b1, b2 the bias corrections: the same update, one pass fewer.
        sqrt_bias2 = math.sqrt(1 - self.beta2**t)
        np.sqrt(v, out=tmp)
        tmp += self.eps * sqrt_bias2
        np.divide(m, tmp, out=tmp)
        tmp *= lr * sqrt_bias2 / (1 - self.beta1**t)
        theta -= tmp

    def stepper(self, theta: np.ndarray, state: State) -> tuple[np.ndarray, Stepper]:
        # m and v stacked in one (2, n) array, and the gradient beside its
        # square: both moment updates are then three calls instead of six,
        # with the same float operations on every element (the factors
        # 1 - beta are cast to the parameters' dtype either way).
        n, dtype = len(theta), theta.dtype
        G, T = np.empty((2, n), dtype), np.empty((2, n), dtype)
        MV = np.stack([state["m"], state["v"]]).astype(dtype, copy=False)
        state["m"], state["v"] = MV[0], MV[1]
        decay = np.array([[1 - self.beta1], [1 - self.beta2]], dtype=dtype)
        grad, m, v, tmp = G[0], MV[0], MV[1], T[0]

        def step(lr: float) -> None:
            t = _tick(state)
            np.multiply(grad, grad, out=G[1])
            np.subtract(G, MV, out=T)
            np.multiply(T, decay, out=T)
            np.add(MV, T, out=MV)
            self._apply(theta, m, v, tmp, lr, t)

        return grad, step


@dataclass(frozen=True)
class RMSprop(Optimizer):
    """PyTorch's/Keras' RMSprop: ``v = rho*v + (1-rho)*g**2``; ``theta -= lr*g/(sqrt(v)+eps)``."""

    rho: float = 0.9
    eps: float = 1e-7
    name = "rmsprop"

    def init(self, theta):
        return {**super().init(theta), "v": np.zeros_like(theta)}

    def _update(self, theta, grad, state, lr, t):
        v = state["v"]
        v += (1 - self.rho) * (grad * grad - v)
        denom = np.sqrt(v)
        denom += self.eps
        theta -= lr * grad / denom


@dataclass(frozen=True)
class Nesterov(Momentum):
    """Momentum with Nesterov's look-ahead (``Momentum(nesterov=True)`` under its own name)."""

    nesterov: bool = True
    name = "nesterov"


OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": SGD,
    "momentum": Momentum,
    "nesterov": Nesterov,
    "adam": Adam,
    "rmsprop": RMSprop,
}

# Keras' and PyTorch's default learning rates, used when none is given.
DEFAULT_LR: dict[str, float] = {"sgd": 0.01, "momentum": 0.01, "nesterov": 0.01, "adam": 0.001, "rmsprop": 0.001}


def hyperparameters(name: str) -> list[str]:
    """The hyperparameters the optimizer registered as ``name`` takes (its dataclass fields)."""
    return list(get_optimizer_class(name).__dataclass_fields__)


def get_optimizer_class(name: str) -> type[Optimizer]:
    try:
        return OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(OPTIMIZERS)}") from None


def get_optimizer(name: str, **hyper: Any) -> Optimizer:
    """Build the optimizer registered as ``name`` with the given hyperparameters."""
    cls = get_optimizer_class(name)
    fields = set(cls.__dataclass_fields__)
    unknown = set(hyper) - fields
    if unknown:
        raise ValueError(
            f"optimizer {name!r} takes {sorted(fields) or 'no hyperparameters'}, got {sorted(unknown)}"
        )
    return cls(**hyper)
