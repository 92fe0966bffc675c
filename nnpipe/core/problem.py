"""What to train: the network, its starting parameters and the encoded rows, checked once.

Every training loop (:func:`nnpipe.core.training.fit`,
:func:`nnpipe.distributed.fit_distributed`) takes a :class:`Problem` and the
:class:`~nnpipe.config.TrainConfig` saying how to train it, so the arrays are
checked in one place (here) and the loops' signatures do not repeat each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nnpipe.core.network import NetworkSpec
from nnpipe.data.checks import aligned, check_features, check_lengths


@dataclass(frozen=True)
class Problem:
    """What to train: the network, where its parameters start, and the encoded rows it learns from.

    Building one checks the arrays; a bad one raises ValueError with a one-line
    message naming the array, the column and the row.

    Parameters
    ----------
    spec : NetworkSpec
        The network.
    theta : ndarray of shape (spec.n_params,)
        Starting parameters; training never modifies them (loops copy first).
    X : array-like of shape (n_samples, spec.n_inputs)
        Scaled, finite features; kept as a C-contiguous, aligned array of
        ``spec.dtype`` (no copy when it already is one; see :func:`nnpipe.data.checks.aligned`).
    Y : array-like of shape (n_samples,) or (n_samples, n_outputs)
        Targets encoded for the head (:meth:`nnpipe.model.Model.encode_targets`);
        finite when floating.
    validation : (X_val, Y_val), optional
        Held-out rows of the same form, evaluated after every epoch (metrics
        ``val/...`` and early stopping).
    """

    spec: NetworkSpec
    theta: np.ndarray
    X: np.ndarray
    Y: np.ndarray
    validation: tuple[np.ndarray, np.ndarray] | None = None

    def __post_init__(self) -> None:
        X, Y = _rows(self.X, self.Y, self.spec, "data")
        if len(X) == 0:
            raise ValueError("cannot train on 0 rows")
        theta = np.asarray(self.theta)
        if theta.shape != (self.spec.n_params,):
            raise ValueError(f"theta has shape {theta.shape}, expected ({self.spec.n_params},) for {self.spec}")
        validation = self.validation
        if validation is not None:
            if not isinstance(validation, (tuple, list)) or len(validation) != 2:
                raise TypeError(f"validation must be an (X, Y) pair, got {type(validation).__name__}")
            validation = _rows(validation[0], validation[1], self.spec, "validation")
        # Frozen: the normalised arrays are set once, here.
        for name, value in (("X", X), ("Y", Y), ("theta", theta), ("validation", validation)):
            object.__setattr__(self, name, value)


def _rows(X: Any, Y: Any, spec: NetworkSpec, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``(X, Y)`` checked: 2-D finite X with the network's inputs in its dtype, as many rows of finite Y."""
    if not (isinstance(X, np.ndarray) and X.dtype == spec.dtype and X.ndim == 2 and X.shape[1] == spec.n_inputs
            and np.isfinite(X.sum())):
        # The slow path names the column and row. The fast test above is a sum: non-finite
        # if any value is (or, rarely, if the sum overflows, and then this finds nothing).
        X = check_features(X, f"{what} X", spec.n_inputs, dtype=spec.dtype)
    X = aligned(X)
    Y = aligned(np.asarray(Y))
    check_lengths(**{f"{what} X": X, f"{what} Y": Y})
    if Y.dtype.kind in "fc" and not np.isfinite(Y.sum()) and not np.isfinite(Y).all():
        row = int(np.argwhere(~np.isfinite(Y))[0][0])
        raise ValueError(f"{what} Y row {row} is {Y.reshape(len(Y), -1)[row].tolist()!r}; targets must be finite")
    return X, Y
