"""The driver's outer optimizer for ``local-sgd`` and ``async`` (SlowMo, DiLoCo).

A merge rule proposes a *target*: the row-weighted average of the trainers'
parameters (``local-sgd``) or the parameters plus one weighted delta
(``async``). Without an outer optimizer (``none``) the global parameters
simply become the target. With one, ``theta - target`` is a pseudo-gradient
and the core's own optimizers take the step (Wang et al. 2020, SlowMo;
Douillard et al. 2023, DiLoCo):

- ``sgd``: :class:`~nnpipe.core.optimizers.SGD`, or heavy-ball
  :class:`~nnpipe.core.optimizers.Momentum` when ``outer_momentum > 0`` (SlowMo);
- ``nesterov``: :class:`~nnpipe.core.optimizers.Nesterov` (DiLoCo uses lr 0.7, momentum
  0.9; the defaults here, lr 1.0 and momentum 0.5, measured better, see docs/benchmarks.md).

The state (momentum buffer, step count) lives on the driver, is advanced once
per merge in the order merges happen, and is checkpointed with the
parameters of the same merge, so a resumed run continues the same sequence.
"""

from __future__ import annotations

import numpy as np

from nnpipe.config import TrainConfig
from nnpipe.core.optimizers import SGD, Momentum, Nesterov, Optimizer
from nnpipe.distributed.protocol import Pool
from nnpipe.distributed.rounds import MergeRule


class OuterOptimizer:
    """Moves the global parameters toward each round's target.

    Parameters
    ----------
    name : str
        ``none``, ``sgd`` or ``nesterov``.
    lr, momentum : float
        Outer learning rate and momentum (ignored for ``none``).
    theta : ndarray of shape (n_params,)
        Shapes and dtypes the state.
    """

    def __init__(self, name: str, lr: float, momentum: float, theta: np.ndarray):
        self.name, self.lr, self.momentum = name, float(lr), float(momentum)
        self.opt: Optimizer | None
        if name == "none":
            self.opt = None
        elif name == "sgd":
            self.opt = SGD() if momentum == 0 else Momentum(momentum=momentum, nesterov=False)
        elif name == "nesterov":
            self.opt = Nesterov(momentum=momentum)
        else:
            raise ValueError(f"outer_optimizer must be 'none', 'sgd' or 'nesterov', got {name!r}")
        self.state = self.opt.init(theta) if self.opt is not None else {}
        self._g = np.empty_like(theta)
        self._u = np.empty_like(theta)

    @classmethod
    def from_config(cls, config: TrainConfig, theta: np.ndarray) -> "OuterOptimizer":
        lr, momentum = config.outer_settings()
        return cls(config.outer_name(), lr, momentum, theta)

    def apply(self, theta: np.ndarray, target: np.ndarray) -> float:
        """Step ``theta`` (in place) toward ``target``; returns the step's L2 norm.

        ``none`` copies ``target``. Otherwise the optimizer's update ``u`` of
        the pseudo-gradient ``g = theta - target`` is applied as
        ``target + (u + g)``, which equals ``theta + u`` and makes lr 1
        without momentum give ``target`` exactly (``u = -g``).
        """
        if self.opt is None:
            np.subtract(target, theta, out=self._u)
            theta[...] = target
            return float(np.linalg.norm(self._u))
        g = np.subtract(theta, target, out=self._g)
        u = self._u
        u.fill(0.0)
        self.opt.step(u, g, self.state, self.lr, inplace=True)  # u = -lr * (momentum-corrected g)
        norm = float(np.linalg.norm(u))
        u += g
        np.add(target, u, out=theta)
        return norm

    def load(self, state: dict[str, np.ndarray]) -> None:
        """Restore :attr:`state` from a checkpoint (keys must match this optimizer's)."""
        if set(state) != set(self.state):
            raise ValueError(f"checkpoint's outer optimizer state has keys {sorted(state)}, "
                             f"outer_optimizer={self.name!r} needs {sorted(self.state)}")
        self.state = {k: np.array(v, dtype=self.state[k].dtype, copy=True) for k, v in state.items()}


class OuterRule(MergeRule):
    """A merge rule whose trainers step with their own optimizers and whose driver steps with :class:`OuterOptimizer`.

    The base of ``local-sgd`` and ``async``: trainer states go into
    checkpoints, the outer state is the driver's.
    """

    trainer_state = True

    def __init__(self, pool: Pool, config: TrainConfig, theta: np.ndarray):
        super().__init__(pool, config, theta)
        self.outer = OuterOptimizer.from_config(config, theta)
