"""The training configuration: one typed, validated record shared by every mode.

A plain dataclass so that the core stays numpy-only, while Prefect and pydantic
can still render it as a form and validate it at a flow's boundary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from nnpipe.optimizers import DEFAULT_LR, OPTIMIZERS
from nnpipe.schedules import SCHEDULES

MODES = ("single", "sync", "local-sgd", "async")
Mode = Literal["single", "sync", "local-sgd", "async"]


@dataclass
class TrainConfig:
    """How to train: optimisation, stopping, and (for the distributed modes) coordination.

    Parameters
    ----------
    optimizer : str
        ``sgd``, ``momentum``, ``nesterov``, ``adam`` or ``rmsprop``.
    lr : float, optional
        Learning rate; defaults to Keras'/PyTorch's default for the optimizer.
    momentum, nesterov, beta1, beta2, eps : optimizer hyperparameters.
    schedule : str
        ``constant``, ``step`` (``step_size`` epochs, ``gamma``) or ``cosine`` (``min_lr``).
    epochs, batch_size : int
        Passes over the training data and rows per optimizer step (the global
        batch in ``sync`` mode; the per-worker batch in ``local-sgd`` and ``async``).
    l2 : float
        Weight decay: adds ``0.5 * l2 * sum(W**2)`` to the loss.
    clip_norm : float, optional
        Clip each gradient to this global L2 norm.
    patience : int, optional
        Early stopping: stop after this many epochs without a better validation
        loss; ``restore_best`` then returns the best parameters.
    seed : int
        Seeds initialisation, shuffling and every worker's random stream.
    dtype : str
        ``float32`` or ``float64``.
    mode : str
        ``single`` (one process), ``sync``, ``local-sgd`` or ``async`` (Dask).
    workers : int
        Dask workers to train on (a local cluster of this size when none is given).
    sync_every : int
        Local steps per round (K) in ``local-sgd`` and ``async``.
    max_staleness : int
        In ``async``: a result computed from parameters more than this many
        merges old is handled by ``staleness_policy``.
    staleness_policy : str
        ``downweight`` (scale the merge by ``1 / (1 + staleness - max_staleness)``) or ``drop``.
    mixing : float
        In ``async``: fraction of a worker's parameter delta applied per merge.
    checkpoint_every : int
        Save a checkpoint every this many rounds/epochs (0: never).
    checkpoint_dir : str, optional
        Where checkpoints go; resuming reads the newest one there.
    """

    optimizer: str = "adam"
    lr: float | None = None
    momentum: float = 0.9
    nesterov: bool = False
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    schedule: str = "constant"
    step_size: int = 30
    gamma: float = 0.1
    min_lr: float = 0.0
    epochs: int = 20
    batch_size: int = 32
    l2: float = 0.0
    clip_norm: float | None = None
    patience: int | None = None
    restore_best: bool = True
    seed: int = 0
    dtype: Literal["float32", "float64"] = "float32"
    mode: Mode = "single"
    workers: int = 2
    sync_every: int = 10
    max_staleness: int = 4
    staleness_policy: Literal["downweight", "drop"] = "downweight"
    mixing: float = 1.0
    checkpoint_every: int = 0
    checkpoint_dir: str | None = None

    def __post_init__(self) -> None:
        def bad(name: str, want: str) -> ValueError:
            return ValueError(f"config field {name!r}: expected {want}, got {getattr(self, name)!r}")

        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"one of {sorted(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", f"one of {sorted(SCHEDULES)}")
        if self.mode not in MODES:
            raise bad("mode", f"one of {list(MODES)}")
        if self.dtype not in ("float32", "float64"):
            raise bad("dtype", "'float32' or 'float64'")
        if self.staleness_policy not in ("downweight", "drop"):
            raise bad("staleness_policy", "'downweight' or 'drop'")
        if self.lr is not None and not self.lr > 0:
            raise bad("lr", "a positive number")
        for name in ("epochs", "batch_size", "workers", "sync_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise bad(name, "an integer >= 1")
        for name in ("max_staleness", "checkpoint_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise bad(name, "an integer >= 0")
        if self.l2 < 0:
            raise bad("l2", "a number >= 0")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise bad("clip_norm", "a positive number or None")
        if self.patience is not None and self.patience < 1:
            raise bad("patience", "an integer >= 1 or None")
        if not 0 < self.mixing <= 1:
            raise bad("mixing", "a number in (0, 1]")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    def optimizer_hyper(self) -> dict[str, Any]:
        """The hyperparameters the chosen optimizer takes."""
        if self.optimizer in ("momentum", "nesterov"):
            return {"momentum": self.momentum, "nesterov": self.nesterov or self.optimizer == "nesterov"}
        if self.optimizer == "adam":
            return {"beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}
        return {}

    def schedule_kwargs(self) -> dict[str, float]:
        if self.schedule == "step":
            return {"step_size": self.step_size, "gamma": self.gamma}
        if self.schedule == "cosine":
            return {"min_lr": self.min_lr}
        return {}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training config field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**d)

