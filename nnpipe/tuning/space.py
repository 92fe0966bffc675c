"""Search spaces: ``NAME=EXPR`` entries parsed into Optuna distributions, and trials applied to a config.

Grammar of one entry (the command line's ``--space`` or a ``[tune.space]`` table)::

    lr=loguniform(1e-4,1e-1)        float on a log scale        (also uniform(a,b), float(a,b[,log]))
    batch_size=int(16,256,log)      integer, optionally log-scaled (also int(a,b,step=K))
    optimizer=choice(adam,sgd)      categorical
    hidden=choice(32;64,32;128,64)  layer lists: alternatives split by ';', layers by ','
    hidden=int(16,256)              one hidden layer whose width is sampled
    lr=0.01,0.001                   shorthand for choice(...) (the grid syntax of ``nnpipe sweep``)

Every error quotes the entry and says what was expected; nothing about an
entry is checked later than :func:`parse_space`, so a bad space fails before
any run, study or cluster exists.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, fields
from typing import Any, Iterable, Mapping

import optuna

from nnpipe.config import OPTIMIZER_FIELDS, SCHEDULE_FIELDS, TrainConfig
from nnpipe.core.network import NetworkSpec

TRAIN_FIELDS = frozenset(f.name for f in fields(TrainConfig))
# Trials train one process each on a worker, so the coordination fields are not searchable.
NOT_SEARCHABLE = frozenset({"mode", "workers", "sync_every", "max_staleness", "staleness_policy", "mixing",
                            "checkpoint_every", "checkpoint_dir", "dtype", "seed"})
SEARCHABLE = (TRAIN_FIELDS - NOT_SEARCHABLE) | {"hidden", "activation"}
_CALL = re.compile(r"^\s*([a-z]+)\s*\((.*)\)\s*$", re.S)


class SpaceError(ValueError):
    """A bad search-space entry; the message quotes it."""


@dataclass(frozen=True)
class Param:
    """One searched name: its Optuna distribution and the entry it came from."""

    name: str
    distribution: optuna.distributions.BaseDistribution
    entry: str

    def decode(self, value: Any) -> Any:
        """The config value of a sampled one (``hidden`` choices travel as ``"64,32"``)."""
        if self.name == "hidden":
            return [int(value)] if isinstance(value, int) else [int(h) for h in str(value).split(",")]
        return value


@dataclass(frozen=True)
class Space:
    """An ordered set of :class:`Param`; ``entries`` round-trips through :func:`parse_space`."""

    params: tuple[Param, ...]

    @property
    def entries(self) -> list[str]:
        return [p.entry for p in self.params]

    @property
    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        return {p.name: p.distribution for p in self.params}

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Sample (or read back a fixed/enqueued value for) every parameter of ``trial``."""
        out = {}
        for p in self.params:
            d = p.distribution
            if isinstance(d, optuna.distributions.CategoricalDistribution):
                out[p.name] = trial.suggest_categorical(p.name, d.choices)
            elif isinstance(d, optuna.distributions.IntDistribution):
                out[p.name] = trial.suggest_int(p.name, d.low, d.high, step=d.step, log=d.log)
            else:
                out[p.name] = trial.suggest_float(p.name, d.low, d.high, log=d.log)
        return out

    def grid(self) -> dict[str, list[Any]]:
        """The search space of Optuna's GridSampler; every parameter must be a ``choice``."""
        continuous = [p.entry for p in self.params
                      if not isinstance(p.distribution, optuna.distributions.CategoricalDistribution)]
        if continuous:
            raise SpaceError(f"the grid sampler needs choice(...) values for every parameter; "
                             f"{continuous[0]!r} is a range (use --sampler tpe or random, or list the values)")
        return {p.name: list(p.distribution.choices) for p in self.params}

    def apply(self, train: TrainConfig, hidden: list[int], activation: str,
              params: Mapping[str, Any]) -> tuple[TrainConfig, list[int], str]:
        """``(train, hidden, activation)`` with sampled ``params`` in place, validated.

        Raises ``ValueError`` naming the field (a combination such as
        ``optimizer=adam`` with ``momentum=0.9`` is only invalid together).
        """
        by_name = {p.name: p for p in self.params}
        values = {k: by_name[k].decode(v) if k in by_name else v for k, v in params.items()}
        hidden = list(values.pop("hidden", hidden))
        activation = values.pop("activation", activation)
        NetworkSpec(1, tuple(hidden), activation, 1)
        return dataclasses.replace(train, **values), hidden, activation


def _scalar(text: str) -> Any:
    """``3`` -> 3, ``1e-4`` -> 0.0001, ``true`` -> True, ``none`` -> None, anything else the string."""
    text = text.strip()
    for cast in (int, float):
        try:
            value = cast(text)
        except ValueError:
            continue
        if cast is float and not math.isfinite(value):
            break
        return value
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    return text.strip("'\"")


def _number(text: str, entry: str) -> float | int:
    value = _scalar(text)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpaceError(f"{entry!r}: {text.strip()!r} is not a number")
    return value


def _range(kind: str, args: list[str], entry: str) -> optuna.distributions.BaseDistribution:
    flags = [a.strip() for a in args[2:]]
    if len(args) < 2:
        raise SpaceError(f"{entry!r}: {kind}(...) needs a low and a high bound, e.g. {kind}(1e-4,1e-1)")
    low, high = _number(args[0], entry), _number(args[1], entry)
    log = kind == "loguniform" or "log" in flags
    step = None
    for flag in flags:
        if flag.startswith("step="):
            step = _number(flag[5:], entry)
        elif flag != "log" or kind in ("uniform", "loguniform"):
            raise SpaceError(f"{entry!r}: unknown option {flag!r}; {kind}(low,high"
                             f"{',log' if kind in ('int', 'float') else ''}) expected")
    if not low < high:
        raise SpaceError(f"{entry!r}: low must be < high, got {low!r} and {high!r}")
    if log and low <= 0:
        raise SpaceError(f"{entry!r}: a log scale needs low > 0, got {low!r}")
    if kind == "int":
        if not (float(low).is_integer() and float(high).is_integer()):
            raise SpaceError(f"{entry!r}: int(...) bounds must be integers, got {low!r} and {high!r}")
        if log and step not in (None, 1):
            raise SpaceError(f"{entry!r}: a log scale takes no step")
        return optuna.distributions.IntDistribution(int(low), int(high), log=log, step=int(step or 1))
    if step is not None and log:
        raise SpaceError(f"{entry!r}: a log scale takes no step")
    return optuna.distributions.FloatDistribution(float(low), float(high), log=log, step=step)


def _choices(name: str, body: str, entry: str) -> optuna.distributions.CategoricalDistribution:
    if name == "hidden":
        # Alternatives split by ';', layers by ',': "32;64,32" is [32] or [64, 32].
        alts = [a.strip().replace(" ", "") for a in body.split(";") if a.strip()]
        for alt in alts:
            if not re.fullmatch(r"\d+(,\d+)*", alt) or "0" in alt.split(","):
                raise SpaceError(f"{entry!r}: hidden alternatives are layer sizes like 64,32 separated by ';', "
                                 f"got {alt!r}")
        choices: list[Any] = alts
    else:
        choices = []
        choices = [_scalar(part) for part in body.split(",") if part.strip()]
        bad = [c for c in choices if c is not None and not isinstance(c, (bool, int, float, str))]
        if bad:
            raise SpaceError(f"{entry!r}: choices must be numbers, strings or booleans, got {bad[0]!r}")
    if not choices:
        raise SpaceError(f"{entry!r}: choice(...) needs at least one value")
    if len(set(map(repr, choices))) != len(choices):
        raise SpaceError(f"{entry!r}: a value is listed twice")
    return optuna.distributions.CategoricalDistribution(choices)


def parse_entry(entry: str) -> Param:
    """One ``NAME=EXPR`` entry as a :class:`Param`; :class:`SpaceError` quoting it if malformed."""
    if not isinstance(entry, str):
        raise SpaceError(f"a space entry must be a string NAME=EXPR, got {entry!r}")
    name, sep, expr = entry.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not name or not expr.strip():
        raise SpaceError(f"{entry!r}: expected NAME=EXPR, e.g. 'lr=loguniform(1e-4,1e-1)' or 'optimizer=choice(adam,sgd)'")
    if name not in SEARCHABLE:
        raise SpaceError(f"{entry!r}: {name!r} is not a searchable field; choose from {sorted(SEARCHABLE)}")
    call = _CALL.match(expr)
    if call is None:  # the grid shorthand: lr=0.01,0.001
        if "(" in expr or ")" in expr:
            raise SpaceError(f"{entry!r}: unbalanced parentheses; expected e.g. choice(a,b) or int(16,256,log)")
        return Param(name, _choices(name, expr, entry), entry.strip())
    kind, body = call.group(1), call.group(2)
    if kind == "choice":
        dist: optuna.distributions.BaseDistribution = _choices(name, body, entry)
    elif kind in ("loguniform", "uniform", "float", "int"):
        if name == "hidden" and kind != "int":
            raise SpaceError(f"{entry!r}: hidden takes choice(64,32;128) or int(low,high) (one layer's width)")
        dist = _range(kind, body.split(","), entry)
    else:
        raise SpaceError(f"{entry!r}: unknown function {kind!r}; use loguniform, uniform, float, int or choice")
    return Param(name, dist, entry.strip())


def parse_space(entries: Iterable[str] | Mapping[str, str], base: TrainConfig | None = None) -> Space:
    """Parse entries (a list of ``NAME=EXPR`` or a mapping ``NAME -> EXPR``) and check their values.

    With ``base``, every listed choice and both ends of every range are
    applied to it one at a time, so a value the configuration rejects (an
    unknown optimizer, ``lr=uniform(-1,1)``) fails here, quoting its entry.
    """
    if isinstance(entries, Mapping):
        entries = [f"{k}={v}" for k, v in entries.items()]
    params = [parse_entry(e) for e in entries]
    if not params:
        raise SpaceError("the search space is empty; give at least one --space NAME=EXPR, "
                         "e.g. --space 'lr=loguniform(1e-4,1e-1)'")
    seen: set[str] = set()
    for p in params:
        if p.name in seen:
            raise SpaceError(f"{p.entry!r}: {p.name!r} is given twice")
        seen.add(p.name)
    space = Space(tuple(params))
    if base is not None:
        for p in params:
            if p.name in OPTIMIZER_FIELDS or p.name in SCHEDULE_FIELDS:
                continue  # valid only with the optimizer/schedule a trial picks: checked per trial
            d = p.distribution
            values = d.choices if isinstance(d, optuna.distributions.CategoricalDistribution) else (d.low, d.high)
            for value in values:
                try:
                    space.apply(base, [1], "relu", {p.name: value})
                except (ValueError, TypeError) as exc:
                    raise SpaceError(f"{p.entry!r}: {exc}") from None
    return space
