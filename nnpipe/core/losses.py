"""Output heads: the output activation paired with its loss.

Each head maps the last layer's pre-activation ``Z`` (n_samples, n_outputs) to
predictions ``P`` and gives the mean loss over the batch and its gradient with
respect to ``Z``. Pairing them is what makes the gradient cheap and stable
(softmax + cross-entropy gives ``P - Y``), the way scikit-learn's MLP does.

Targets ``Y`` are encoded by :mod:`nnpipe.data.targets`: class indices of shape
(n_samples,) for ``softmax``, a 0/1 column (n_samples, 1) for ``sigmoid``, and
floats (n_samples, n_outputs) for ``identity``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from nnpipe.core.activations import sigmoid


class Head(NamedTuple):
    task: str  # "multiclass", "binary" or "regression"
    forward: Callable[[np.ndarray], np.ndarray]
    # row_stat(P, Y) -> (n_samples,): what each row contributes to the loss, before
    # the costly part (the log); loss_from_stats turns any number of rows into the
    # mean loss. Split so a training loop can defer the log to once per epoch.
    row_stat: Callable[[np.ndarray, np.ndarray], np.ndarray]
    loss_from_stats: Callable[[np.ndarray], float]
    # delta(P, Y) -> dZ for the *mean* loss; it may overwrite P.
    delta: Callable[[np.ndarray, np.ndarray], np.ndarray]

    def loss(self, P: np.ndarray, Y: np.ndarray) -> float:
        """Mean loss of predictions ``P`` against encoded targets ``Y``."""
        return self.loss_from_stats(self.row_stat(P, Y))


_EPS = {np.dtype(np.float32): float(np.finfo(np.float32).eps), np.dtype(np.float64): float(np.finfo(np.float64).eps)}


def _eps(P: np.ndarray) -> float:
    return _EPS.get(P.dtype) or float(np.finfo(P.dtype).eps)


# The ufunc methods (np.add.reduce, ...) are called directly: the ndarray
# method wrappers cost about a microsecond each, which is a third of a step
# for small networks and batches.
_ROWS = np.arange(1 << 16)


def _rows(n: int) -> np.ndarray:
    return _ROWS[:n] if n <= len(_ROWS) else np.arange(n)


def _softmax(Z: np.ndarray) -> np.ndarray:
    # Shift by the row max so exp never overflows; computed in place on Z.
    Z -= np.maximum.reduce(Z, axis=1, keepdims=True)
    np.exp(Z, out=Z)
    Z /= np.add.reduce(Z, axis=1, keepdims=True)
    return Z


def _true_class_probability(P: np.ndarray, y: np.ndarray) -> np.ndarray:
    return P[_rows(len(y)), y]


def _negative_mean_log(p_true: np.ndarray) -> float:
    """Cross-entropy from each row's probability of its true label (clipped away from 0)."""
    if len(p_true) == 0:
        return float("nan")
    p = np.maximum(p_true, _eps(p_true))
    return -float(np.add.reduce(np.log(p, out=p))) / len(p)


_EYES: dict[tuple[int, np.dtype], np.ndarray] = {}


def _one_hot(y: np.ndarray, k: int, dtype: np.dtype) -> np.ndarray:
    eye = _EYES.get((k, dtype))
    if eye is None:
        eye = _EYES[(k, dtype)] = np.eye(k, dtype=dtype)
    return eye.take(y, axis=0)


def _cross_entropy_delta(P: np.ndarray, y: np.ndarray) -> np.ndarray:
    # P - onehot(y): rows of a cached identity are 3x cheaper than a 2-D fancy-index update.
    np.subtract(P, _one_hot(y, P.shape[1], P.dtype), out=P)
    P *= 1.0 / len(y)
    return P


def _true_label_probability(P: np.ndarray, Y: np.ndarray) -> np.ndarray:
    # Binary cross-entropy per row is -log of the probability given to the true label.
    return np.where(Y > 0.5, P, 1 - P)[:, 0]


def _binary_cross_entropy_delta(P: np.ndarray, Y: np.ndarray) -> np.ndarray:
    P -= Y
    P *= 1.0 / len(Y)
    return P


def _row_squared_error(P: np.ndarray, Y: np.ndarray) -> np.ndarray:
    diff = P - Y
    return np.mean(diff * diff, axis=1)


def _mean(stats: np.ndarray) -> float:
    return float(np.mean(stats)) if len(stats) else float("nan")


def _mse_delta(P: np.ndarray, Y: np.ndarray) -> np.ndarray:
    P -= Y
    P *= 2.0 / P.size
    return P


HEADS: dict[str, Head] = {
    "softmax": Head("multiclass", _softmax, _true_class_probability, _negative_mean_log, _cross_entropy_delta),
    "sigmoid": Head("binary", sigmoid, _true_label_probability, _negative_mean_log, _binary_cross_entropy_delta),
    "identity": Head("regression", lambda Z: Z, _row_squared_error, _mean, _mse_delta),
}

# Names people coming from Keras use for the same pairs.
LOSS_ALIASES: dict[str, str] = {
    "sparse_categorical_crossentropy": "softmax",
    "categorical_crossentropy": "softmax",
    "cross_entropy": "softmax",
    "binary_crossentropy": "sigmoid",
    "mse": "identity",
    "mean_squared_error": "identity",
}

TASK_HEADS: dict[str, str] = {"multiclass": "softmax", "binary": "sigmoid", "regression": "identity"}


def get_head(name: str) -> Head:
    """Return the head registered as ``name`` (or a Keras loss name for it)."""
    key = LOSS_ALIASES.get(name, name)
    try:
        return HEADS[key]
    except KeyError:
        known = sorted(HEADS) + sorted(LOSS_ALIASES)
        raise ValueError(f"unknown output head or loss {name!r}; expected one of {known}") from None


def head_name(name: str) -> str:
    """Canonical head name for a head or Keras loss name."""
    get_head(name)
    return LOSS_ALIASES.get(name, name)
