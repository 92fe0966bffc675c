"""Time to a target: ``val/accuracy>=0.85``, parsed, watched each epoch, and timed from the command's start.

A user names a target as ``KEY>=VALUE`` (higher is better, e.g.
``val/accuracy>=0.85``) or ``KEY<=VALUE`` (lower is better, e.g.
``val/loss<=0.3``). Every training loop's end of epoch (:class:`nnpipe.reporting.Reporter`)
asks :class:`TargetWatch` whether the epoch's logs reach it; the first epoch
that does is recorded as the epochs it took and the seconds since the clock's
origin, and may stop training (``TrainConfig.stop_at_target``).

The clock starts where the user's wait starts: the ``nnpipe`` command sets it
when it begins (:func:`command_started`), so cluster start, data placement and
validation count; a bare :func:`nnpipe.train` call times from its own start
(:func:`call_started`).
"""

from __future__ import annotations

import contextvars
import math
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping

from nnpipe import metrics

# KEY op VALUE; the key is a logged metric such as val/accuracy or train/loss.
_EXPR = re.compile(r"^\s*(?P<key>(train|val)/[A-Za-z0-9_]+)\s*(?P<op>>=|<=)\s*(?P<value>[^\s]+)\s*$")
# The metrics each task's epochs log (nnpipe.core.evaluation, the training loops).
TASK_METRICS = {"classification": ("loss", "accuracy"), "regression": ("loss", "mse", "mae", "r2")}
TRAIN_METRICS = ("loss", "accuracy")  # train/ logs only these (train/accuracy for classification)


@dataclass(frozen=True)
class Target:
    """A parsed target: ``key`` (e.g. ``val/accuracy``), ``op`` (``>=`` or ``<=``) and ``value``."""

    key: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.key}{self.op}{self.value:g}"

    def reached(self, logs: Mapping[str, float]) -> bool:
        """Whether ``logs`` (one epoch's) reach the target; False when the key is not there or not finite."""
        got = logs.get(self.key)
        if got is None or not math.isfinite(got):
            return False
        return got >= self.value if self.op == ">=" else got <= self.value

    def check_task(self, task: str, has_validation: bool = True) -> None:
        """Raise ``ValueError`` when the run of ``task`` will never log :attr:`key`."""
        kind = "regression" if task == "regression" else "classification"
        prefix, name = self.key.split("/", 1)
        logged = TASK_METRICS[kind] if prefix == "val" else tuple(m for m in TRAIN_METRICS if m in TASK_METRICS[kind])
        if name not in logged:
            raise ValueError(f"--until {str(self)!r}: a {kind} run logs {', '.join(f'{prefix}/{m}' for m in logged)}, "
                             f"not {self.key}")
        if prefix == "val" and not has_validation:
            raise ValueError(f"--until {str(self)!r}: this run has no validation rows (val_size is 0); "
                             f"name a train/ metric or set val_size")


def parse_target(text: str, name: str = "--until") -> Target:
    """``val/accuracy>=0.85`` -> :class:`Target`; ``ValueError`` naming ``name`` (the flag) and the text otherwise.

    ``>=`` is for metrics where higher is better (accuracy, r2), ``<=`` for
    losses and errors (loss, mse, mae): the other way round would be reached
    by the first epoch, so it is refused.
    """
    if not isinstance(text, str):
        raise ValueError(f"{name}: expected a target like 'val/accuracy>=0.85', got {text!r}")
    m = _EXPR.match(text)
    if m is None:
        raise ValueError(f"{name} {text!r}: expected METRIC>=VALUE or METRIC<=VALUE with METRIC a train/ or val/ "
                         f"metric, e.g. 'val/accuracy>=0.85' or 'val/loss<=0.3'")
    key, op = m["key"], m["op"]
    try:
        value = float(m["value"])
    except ValueError:
        raise ValueError(f"{name} {text!r}: {m['value']!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} {text!r}: the value must be a finite number, got {m['value']!r}")
    base = metrics.base_name(key)
    if base == "accuracy":
        lo, hi, span = 0.0, 1.0, "between 0 and 1"
    elif base == "r2":
        lo, hi, span = -math.inf, 1.0, "at most 1"
    elif base in metrics.LOWER_IS_BETTER:
        lo, hi, span = 0.0, math.inf, "at least 0"
    else:
        lo, hi, span = -math.inf, math.inf, ""
    if not lo <= value <= hi:
        raise ValueError(f"{name} {text!r}: {base} never reaches {m['value']} ({span})")
    greater = metrics.greater_is_better(key)
    if greater != (op == ">="):
        want = ">=" if greater else "<="
        raise ValueError(f"{name} {text!r}: {base} is {'higher' if greater else 'lower'}-is-better, "
                         f"write {key}{want}{m['value']}")
    return Target(key, op, value)


# ---- the clock -----------------------------------------------------------------------------------
# The command's start is process-wide (the flow's tasks run in other threads); a call's start is
# per thread of control, so concurrent nnpipe.train calls each time their own.
_COMMAND_START: list[float] = []
_CALL_START: contextvars.ContextVar[float | None] = contextvars.ContextVar("nnpipe_call_start", default=None)


@contextmanager
def command_started(at: float | None = None, default: float | None = None) -> Iterator[float]:
    """Time targets from ``at`` (a ``time.time()``) while the block runs: the CLI's start.

    Without ``at``: the start already set by an outer block (the console
    script sets its process's start), else ``default``, else now.
    """
    if at is None:
        at = _COMMAND_START[-1] if _COMMAND_START else (time.time() if default is None else default)
    _COMMAND_START.append(at)
    try:
        yield at
    finally:
        _COMMAND_START.remove(at)


@contextmanager
def call_started() -> Iterator[float]:
    """Time targets from now while the block runs, unless a command's (or an outer call's) start is set."""
    at = time.time()
    token = _CALL_START.set(_CALL_START.get() or at)
    try:
        yield at
    finally:
        _CALL_START.reset(token)


def process_start() -> float:
    """When this process started (``time.time()`` scale): a command's start, imports included."""
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:  # no psutil (a core-only install): the caller's now is the next best
        return time.time()


def origin() -> float:
    """The ``time.time()`` targets are timed from: the command's start, else the call's, else now."""
    if _COMMAND_START:
        return _COMMAND_START[-1]
    return _CALL_START.get() or time.time()


class TargetWatch:
    """Watches each epoch's logs for the first that reaches ``target``.

    ``record()`` is what the run reports: ``{"target": "val/accuracy>=0.85",
    "reached": True, "epochs": 7, "seconds": 12.3, "value": 0.853}``, or
    ``reached`` False with the best value seen. ``epochs`` counts from 1, as the console does.
    """

    def __init__(self, target: Target):
        self.target = target
        self.origin = origin()
        self.epochs: int | None = None
        self.seconds: float | None = None
        self.value: float | None = None
        self.best: float | None = None

    def update(self, epoch: int, logs: Mapping[str, float]) -> bool:
        """Record ``epoch``'s logs; True exactly once, at the first epoch that reaches the target."""
        got = logs.get(self.target.key)
        if got is not None and math.isfinite(got):
            better = max if self.target.op == ">=" else min
            self.best = got if self.best is None else better(self.best, got)
        if self.epochs is not None or not self.target.reached(logs):
            return False
        self.epochs, self.seconds, self.value = epoch + 1, time.time() - self.origin, float(got)
        return True

    @property
    def reached(self) -> bool:
        return self.epochs is not None

    def record(self) -> dict:
        out = {"target": str(self.target), "key": self.target.key, "reached": self.reached, "best": self.best}
        if self.reached:
            out.update(epochs=self.epochs, seconds=self.seconds, value=self.value)
        return out


def describe(record: Mapping) -> str:
    """One line for the console: ``target val/accuracy>=0.85: reached at epoch 7, 12.3 s after the start (0.853)``."""
    if record.get("reached"):
        return (f"target {record['target']}: reached at epoch {record['epochs']}, {record['seconds']:.1f} s after "
                f"the start ({record['value']:.4g})")
    best = record.get("best")
    return (f"target {record['target']}: not reached"
            + ("" if best is None else f" (best {record['key']} {best:.4g})"))
