"""The training configuration: one typed, validated record shared by every mode.

A plain dataclass so that the core stays numpy-only, while Prefect and pydantic
can still render it as a form and validate it at a flow's boundary.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from nnpipe.core import optimizers, schedules
from nnpipe.core.optimizers import DEFAULT_LR, OPTIMIZERS, Optimizer
from nnpipe.core.schedules import SCHEDULES, Schedule

# Hyperparameter fields of TrainConfig that belong to an optimizer or a schedule.
# Left at None they take the registered class's own default; set, they must be
# one the chosen optimizer (schedule) takes. So a new optimizer is one entry in
# optimizers.OPTIMIZERS, plus a field here only if it brings a new name.
OPTIMIZER_FIELDS = ("momentum", "nesterov", "beta1", "beta2", "eps", "rho")
SCHEDULE_FIELDS = ("step_size", "gamma", "min_lr")

MODES = ("single", "sync", "local-sgd", "async")
OVERLAP_DEPTHS = (0, 1, 2)  # local-sgd rounds a trainer may run ahead of the merge (nnpipe/distributed/overlap.py)

# Outer optimizers of local-sgd and async (nnpipe/distributed/outer.py): default (lr, momentum).
# Nesterov's lr 1.0 / momentum 0.5 measured better than DiLoCo's 0.7 / 0.9 on digits at 16
# workers (0.969 vs 0.947 median test accuracy; bench/bench_convergence.py, docs/benchmarks.md).
OUTER_OPTIMIZERS = {"none": (None, None), "sgd": (1.0, 0.0), "nesterov": (1.0, 0.5)}
# outer_optimizer=None picks the mode's: measured on digits at 2-16 workers, Nesterov closes
# most of local SGD's gap to sync. Async takes its merges as they are: with Nesterov it lost 3 and
# 20 points on the 1M-row teacher task at 2 and 4 workers (hundreds of merges an epoch, each pushed
# on by stale momentum) and reached 95% of sync 2.7 epochs later on digits at 16 workers.
OUTER_BY_MODE = {"local-sgd": "nesterov", "async": "none"}
# Synchronous warm-up epochs of local-sgd and async when warmup_epochs is None: this many, but at most
# one in 20 epochs. Measured (bench/bench_convergence.py, docs/benchmarks.md): on digits two sync epochs bring local
# SGD and async to 95% of sync's final accuracy in 4 epochs at 8 workers (sync: 6; no warm-up: 6-8).
DEFAULT_WARMUP_EPOCHS = 2
STALENESS_POLICIES = ("inverse", "downweight", "drop")
LR_SCALINGS = ("none", "linear", "sqrt")
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
    momentum, nesterov, beta1, beta2, eps, rho : float or bool, optional
        Optimizer hyperparameters; None takes the optimizer's own default, and
        a value the chosen optimizer does not take is an error.
    schedule : str
        ``constant``, ``step`` (``step_size`` epochs, ``gamma``) or ``cosine`` (``min_lr``).
    step_size, gamma, min_lr : optional
        Schedule options; None takes the schedule's default.
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
    until : str, optional
        A target to time: ``val/accuracy>=0.85`` (higher is better) or
        ``val/loss<=0.3`` (lower is better), any ``train/`` or ``val/``
        metric the run logs. The first epoch that reaches it is recorded
        (``FitResult.info["target"]``: epochs, and seconds from the command's
        or the :func:`nnpipe.train` call's start), in every mode.
    stop_at_target : bool
        With ``until``: stop training at the first epoch that reaches it (the
        model is that epoch's). False only records it and trains on.
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
    overlap : int
        In ``local-sgd``: rounds a trainer may run ahead of the merge (0, 1 or
        2). ``0`` waits for every round's average (a barrier per round). ``1``
        sends a trainer its next round as soon as its result arrives, starting
        from the newest average plus its own progress not merged yet
        (one-step-delayed averaging); ``2`` also queues the round after, so that
        parameters travel while the trainer computes. See :mod:`nnpipe.distributed.overlap`.
    max_staleness : int
        In ``async``: a result computed from parameters more than this many
        merges old is handled by ``staleness_policy``.
    staleness_policy : str
        In ``async``: ``inverse`` scales every merge by ``1 / (1 + staleness)``
        (staleness-aware async SGD; ``max_staleness`` unused); ``downweight``
        scales merges beyond ``max_staleness`` by ``1 / (1 + staleness - max_staleness)``;
        ``drop`` discards them.
    mixing : float
        In ``async``: fraction of a worker's parameter delta applied per merge.
    outer_optimizer : str, optional
        ``local-sgd`` and ``async``: ``none`` (take the average / the merge
        as is), ``sgd`` (momentum ``outer_momentum``, SlowMo) or ``nesterov``
        (DiLoCo) applied on the driver to ``theta - target`` as a
        pseudo-gradient. None: ``nesterov`` in ``local-sgd``, ``none`` in ``async``.
    outer_lr, outer_momentum : float, optional
        The outer optimizer's step and momentum; None takes its default
        (``sgd``: 1.0 and 0.0; ``nesterov``: 1.0 and 0.5).
    warmup_epochs : int, optional
        ``local-sgd`` and ``async``: run the first epochs synchronously
        (post-local-SGD), each step averaging every worker's gradient of its
        own ``batch_size`` rows; the trainers then start from the driver's
        optimizer state. None: ``min(2, epochs // 20)`` (2 from 40 epochs
        on, none under 20: a sync epoch is a round trip per step, so it stays
        a small share of the run). Measured on digits at 8 and 16 workers, two
        sync epochs take local SGD and async to 95% of sync's accuracy in 4
        epochs instead of 6-8, at the same final accuracy.
    lr_scaling : str
        ``local-sgd`` and ``async``: multiply the learning rate by ``1``
        (``none``), the worker count (``linear``) or its square root (``sqrt``).
    lr_warmup_epochs : int
        ``local-sgd`` and ``async``: ramp the learning rate linearly over these
        epochs, from the unscaled lr to the scaled one (from ``lr / workers``
        to ``lr`` when ``lr_scaling`` is ``none``). Default 0: on digits a
        5-epoch ramp cost 1.5-2.5 epochs to 95% of sync's accuracy at 8 and 16
        workers and no accuracy; set it for a large lr that diverges early.
    checkpoint_every : int
        Save a checkpoint every this many rounds/epochs (0: never).
    memory_share : float
        Large sources: a worker keeps its shard in memory as arrays when it
        takes at most this share of the worker's memory limit; else it streams.
    stream : bool, optional
        Large sources: force streaming (True) or in-memory shards (False); None decides by ``memory_share``.
    stream_cache : bool
        Streaming: decode each piece once and keep the decoded rows on the local disk
        (the worker's local directory) for later passes, removed when the run ends.
        False: decode every pass (no disk used). Results are the same either way.
    auto_round : bool
        Large sources, distributed modes: choose ``batch_size`` and ``sync_every``
        so coordination is at most ~10% of a round (set when neither was given).
    checkpoint_dir : str, optional
        Where checkpoints go; resuming reads the newest one there.
    """

    optimizer: str = "adam"
    lr: float | None = None
    momentum: float | None = None
    nesterov: bool | None = None
    beta1: float | None = None
    beta2: float | None = None
    eps: float | None = None
    rho: float | None = None
    schedule: str = "constant"
    step_size: int | None = None
    gamma: float | None = None
    min_lr: float | None = None
    epochs: int = 20
    batch_size: int = 32
    l2: float = 0.0
    clip_norm: float | None = None
    patience: int | None = None
    restore_best: bool = True
    until: str | None = None
    stop_at_target: bool = True
    seed: int = 0
    dtype: Literal["float32", "float64"] = "float32"
    mode: Mode = "single"
    workers: int = 2
    sync_every: int = 10
    overlap: int = 0
    max_staleness: int = 4
    staleness_policy: Literal["inverse", "downweight", "drop"] = "inverse"
    mixing: float = 1.0
    outer_optimizer: Literal["none", "sgd", "nesterov"] | None = None
    outer_lr: float | None = None
    outer_momentum: float | None = None
    warmup_epochs: int | None = None
    lr_scaling: Literal["none", "linear", "sqrt"] = "linear"
    lr_warmup_epochs: int = 0
    checkpoint_every: int = 0
    checkpoint_dir: str | None = None
    memory_share: float = 0.5
    stream: bool | None = None
    stream_cache: bool = True
    auto_round: bool = False

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
        if self.staleness_policy not in STALENESS_POLICIES:
            raise bad("staleness_policy", f"one of {list(STALENESS_POLICIES)}")
        if self.outer_optimizer is not None and self.outer_optimizer not in OUTER_OPTIMIZERS:
            raise bad("outer_optimizer", f"one of {list(OUTER_OPTIMIZERS)}")
        if self.lr_scaling not in LR_SCALINGS:
            raise bad("lr_scaling", f"one of {list(LR_SCALINGS)}")
        if self.lr is not None and not (_is_number(self.lr) and 0 < self.lr < math.inf):
            raise bad("lr", "a positive finite number")
        for name in ("epochs", "batch_size", "workers", "sync_every"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise bad(name, "an integer >= 1")
        for name in ("max_staleness", "checkpoint_every", "warmup_epochs", "lr_warmup_epochs"):
            if name == "warmup_epochs" and self.warmup_epochs is None:
                continue
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                raise bad(name, "an integer >= 0" + (" or None" if name == "warmup_epochs" else ""))
        for name in ("l2", "mixing", "clip_norm", "outer_lr", "outer_momentum", *OPTIMIZER_FIELDS, *SCHEDULE_FIELDS):
            value = getattr(self, name)
            if name == "nesterov":  # the one switch among the hyperparameters
                if value is not None and not isinstance(value, bool):
                    raise bad(name, "True, False or None")
            elif value is not None and not (_is_number(value) and math.isfinite(value)):
                raise bad(name, "a finite number")
        if not _is_int(self.overlap) or self.overlap not in OVERLAP_DEPTHS:
            raise bad("overlap", f"one of {list(OVERLAP_DEPTHS)}")
        if not _is_int(self.seed) or self.seed < 0:
            raise bad("seed", "an integer >= 0")
        if self.patience is not None and not _is_int(self.patience):
            raise bad("patience", "an integer >= 1 or None")
        if not isinstance(self.restore_best, bool):
            raise bad("restore_best", "True or False")
        if not isinstance(self.stop_at_target, bool):
            raise bad("stop_at_target", "True or False")
        self.target()  # a malformed ``until`` fails here, naming the field
        self._check_hyper("optimizer", self.optimizer, OPTIMIZER_FIELDS, optimizers.hyperparameters(self.optimizer))
        self._check_hyper("schedule", self.schedule, SCHEDULE_FIELDS, schedules.hyperparameters(self.schedule))
        if self.l2 < 0:
            raise bad("l2", "a number >= 0")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise bad("clip_norm", "a positive number or None")
        if self.patience is not None and self.patience < 1:
            raise bad("patience", "an integer >= 1 or None")
        if not 0 < self.mixing <= 1:
            raise bad("mixing", "a number in (0, 1]")
        if self.outer_name() == "none" and (self.outer_optimizer is not None or self.mode in OUTER_BY_MODE):
            # outer_lr / outer_momentum would be ignored: say so rather than run without them
            for name in ("outer_lr", "outer_momentum"):
                if getattr(self, name) is not None:
                    raise bad(name, f"None when the outer optimizer is 'none' (mode {self.mode!r}, outer_optimizer="
                                    f"{self.outer_optimizer!r}); set outer_optimizer to 'sgd' or 'nesterov'")
        if self.outer_lr is not None and not self.outer_lr > 0:
            raise bad("outer_lr", "a positive number")
        if self.outer_momentum is not None and not 0 <= self.outer_momentum < 1:
            raise bad("outer_momentum", "a number in [0, 1)")
        if self.outer_name() == "nesterov" and self.outer_momentum == 0:
            raise bad("outer_momentum", "a number in (0, 1) for outer_optimizer='nesterov' (use 'sgd' without momentum)")
        if not (_is_number(self.memory_share) and 0 < self.memory_share <= 1):
            raise bad("memory_share", "a number in (0, 1]")

    def _check_hyper(self, kind: str, name: str, fields_: tuple[str, ...], takes: list[str]) -> None:
        extra = [f for f in fields_ if getattr(self, f) is not None and f not in takes]
        if extra:
            raise ValueError(f"config field {extra[0]!r}: {kind} {name!r} takes {takes or 'no options'}, "
                             f"got {extra[0]}={getattr(self, extra[0])!r}")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    def outer_name(self) -> str:
        """The outer optimizer really used: ``outer_optimizer``, or the mode's default."""
        if self.outer_optimizer is not None:
            return self.outer_optimizer
        return OUTER_BY_MODE.get(self.mode, "none")

    def sync_warmup_epochs(self) -> int:
        """Synchronous warm-up epochs really run: ``warmup_epochs``, or ``min(2, epochs // 20)``; 0 outside local-sgd/async."""
        if self.mode not in ("local-sgd", "async"):
            return 0
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return min(DEFAULT_WARMUP_EPOCHS, self.epochs // 20)

    def outer_settings(self) -> tuple[float, float]:
        """``(outer_lr, outer_momentum)`` really used (defaults of the outer optimizer resolved)."""
        lr, momentum = OUTER_OPTIMIZERS[self.outer_name()]
        lr = self.outer_lr if self.outer_lr is not None else lr
        momentum = self.outer_momentum if self.outer_momentum is not None else momentum
        return (1.0 if lr is None else lr), (0.0 if momentum is None else momentum)

    def optimizer_hyper(self) -> dict[str, Any]:
        """The hyperparameters set for the chosen optimizer (unset ones keep its defaults)."""
        return {f: getattr(self, f) for f in OPTIMIZER_FIELDS if getattr(self, f) is not None}

    def schedule_kwargs(self) -> dict[str, float]:
        """The options set for the chosen schedule (unset ones keep its defaults)."""
        return {f: getattr(self, f) for f in SCHEDULE_FIELDS if getattr(self, f) is not None}

    def target(self) -> Any:
        """The parsed ``until`` (:class:`nnpipe.target.Target`), or None."""
        from nnpipe.target import parse_target

        return None if self.until is None else parse_target(self.until, "config field 'until' (--until)")

    def make_optimizer(self) -> Optimizer:
        """The optimizer this config describes (built once by the loop that owns the parameters)."""
        return optimizers.get_optimizer(self.optimizer, **self.optimizer_hyper())

    def make_schedule(self) -> Schedule:
        """The learning-rate schedule this config describes: ``f(epoch) -> lr``."""
        return schedules.get_schedule(self.schedule, self.learning_rate, self.epochs, **self.schedule_kwargs())

    def effective(self) -> dict[str, Any]:
        """Every setting with the value training really uses (defaults of the optimizer resolved)."""
        out = self.to_dict()
        out["lr"] = self.learning_rate
        opt = self.make_optimizer()
        for f in OPTIMIZER_FIELDS:
            out[f] = getattr(opt, f, None)
        out["outer_optimizer"] = self.outer_name()
        out["warmup_epochs"] = self.sync_warmup_epochs()
        if out["outer_optimizer"] != "none":
            out["outer_lr"], out["outer_momentum"] = self.outer_settings()
        return out

    def applicable(self) -> dict[str, Any]:
        """The settings that apply to this run, with the values training uses: what MLflow logs as params.

        Like :meth:`effective` (``lr`` 0.001 for Adam, schedule defaults
        filled in), without what does not apply: unset options (``beta1``
        for SGD), fields of other modes (``max_staleness`` outside
        ``async``), ``restore_best`` without ``patience``, and the
        checkpoint directory (a place, not a setting). Two runs' params then
        differ only where their training did, whether from ``train`` or ``tune``.
        """
        import inspect

        effective = self.effective()
        factory = schedules.SCHEDULES[self.schedule]
        for name, p in inspect.signature(factory).parameters.items():
            if name in effective and effective[name] is None and p.default is not inspect.Parameter.empty:
                effective[name] = p.default
        out = {}
        for key, value in effective.items():
            modes = MODE_ONLY.get(key)
            if value is None or key == "checkpoint_dir" or (modes and self.mode not in modes):
                continue
            if key == "restore_best" and self.patience is None:
                continue  # nothing to restore without early stopping
            if key == "stop_at_target" and self.until is None:
                continue  # nothing to stop at without a target
            out[key] = value
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training config field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**d)



# Training fields that only mean something in some modes.
MODE_ONLY: dict[str, tuple[str, ...]] = {
    "workers": ("sync", "local-sgd", "async"),
    "sync_every": ("local-sgd", "async"),
    "overlap": ("local-sgd",),
    "max_staleness": ("async",),
    "staleness_policy": ("async",),
    "mixing": ("async",),
}


def _is_int(value: Any) -> bool:
    """An integer, and not a bool (``True`` is not an epoch count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
