"""What training returns and raises, shared by every loop and by the reporting layer.

Kept apart from the loops so that :mod:`nnpipe.core.training`, :mod:`nnpipe.reporting`
and the distributed loops all import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from nnpipe.core.optimizers import State

# callback(epoch_or_round, logs): logs use the MLflow metric keys ("train/loss", ...).
Callback = Callable[[int, dict[str, float]], None]


class DivergenceError(FloatingPointError):
    """Parameters or loss became non-finite; the message says where."""


@dataclass
class FitResult:
    """What every training mode returns.

    Attributes
    ----------
    theta : ndarray of shape (n_params,)
        Final (or best, with early stopping and ``restore_best``) parameters.
    opt_state : dict of ndarray
        Optimizer state at the end (for resuming).
    history : dict of str to list of float
        One entry per epoch or round for each logged key.
    epochs_run : int
    best_epoch : int or None
    stopped_early : bool
    info : dict
        Mode-specific facts (workers, events such as a lost worker).
    model : Model or None
        The servable model (scaler and labels inside) when :func:`nnpipe.train`
        was given a dataset rather than bare arrays.
    """

    theta: np.ndarray
    opt_state: State
    history: dict[str, list[float]] = field(default_factory=dict)
    epochs_run: int = 0
    best_epoch: int | None = None
    stopped_early: bool = False
    info: dict = field(default_factory=dict)
    model: Any = None


def check_finite(theta: np.ndarray, where: str) -> None:
    """Raise :class:`DivergenceError` naming ``where`` if ``theta`` has NaN or inf."""
    if not np.isfinite(theta).all():
        n_bad = int(np.count_nonzero(~np.isfinite(theta)))
        raise DivergenceError(
            f"training diverged: {n_bad} of {theta.size} parameters are non-finite {where}; "
            "lower the learning rate or set clip_norm"
        )
