"""Learning-rate schedules: functions of training progress in epochs.

``get_schedule(name, lr, epochs, **kw)`` returns ``f(epoch) -> lr`` where
``epoch`` counts from 0 and may be fractional (the distributed loops advance
in rounds, not whole epochs).
"""

from __future__ import annotations

import inspect
import math
from typing import Callable

Schedule = Callable[[float], float]


def constant(lr: float, epochs: int) -> Schedule:
    return lambda epoch: lr


def step_decay(lr: float, epochs: int, step_size: int = 30, gamma: float = 0.1) -> Schedule:
    """Multiply the rate by ``gamma`` every ``step_size`` epochs (PyTorch's StepLR)."""
    if step_size < 1:
        raise ValueError(f"step_size must be >= 1 epoch, got {step_size!r}")
    return lambda epoch: lr * gamma ** (int(epoch) // step_size)


def cosine(lr: float, epochs: int, min_lr: float = 0.0) -> Schedule:
    """Cosine annealing from ``lr`` to ``min_lr`` over ``epochs`` (PyTorch's CosineAnnealingLR)."""
    span = max(epochs, 1)
    return lambda epoch: min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(epoch, span) / span))


SCHEDULES: dict[str, Callable[..., Schedule]] = {"constant": constant, "step": step_decay, "cosine": cosine}


def hyperparameters(name: str) -> list[str]:
    """The keyword arguments the schedule registered as ``name`` takes beyond ``lr`` and ``epochs``."""
    return list(inspect.signature(_factory(name)).parameters)[2:]


def _factory(name: str) -> Callable[..., Schedule]:
    try:
        return SCHEDULES[name]
    except KeyError:
        raise ValueError(f"unknown schedule {name!r}; expected one of {sorted(SCHEDULES)}") from None


def get_schedule(name: str, lr: float, epochs: int, **kwargs: float) -> Schedule:
    """Build the schedule registered as ``name``; unknown keyword arguments are refused by name."""
    unknown = sorted(set(kwargs) - set(hyperparameters(name)))
    if unknown:
        raise ValueError(f"schedule {name!r} takes {hyperparameters(name) or 'no options'}, got {unknown}")
    return _factory(name)(lr, epochs, **kwargs)
