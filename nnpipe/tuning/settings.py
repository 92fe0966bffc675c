"""A study's options (``--trials``, ``--sampler``, ...), from keyword arguments or a config file's ``[tune]`` table.

A ``[tune]`` table next to the pipeline's settings::

    [tune]
    trials = 20
    sampler = "tpe"          # tpe | random | grid (default tpe, or a resumed study's own)
    pruner = "median"        # median | hyperband | none (default median, or a resumed study's own)
    parallel = 2
    timeout = 600            # seconds; no new trial starts after it
    study = "iris-lr"        # resumes the study if it exists
    storage = "sqlite:///optuna.db"

    [tune.space]
    lr = "loguniform(1e-4,1e-1)"
    hidden = "choice(32;64,32;128,64)"

(``space`` may also be a list of ``"NAME=EXPR"`` strings.) Flags override it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Mapping

from nnpipe.tuning.study import PRUNERS, SAMPLERS

DEFAULT_TRIALS = 20


@dataclass
class TuneSettings:
    """How to search. ``trials=None``: the whole grid for ``grid``, else :data:`DEFAULT_TRIALS`.

    ``sampler``, ``pruner`` and ``metric`` left None are a resumed study's own
    (:mod:`nnpipe.tuning.resume`), else ``tpe``, ``median`` and the task's metric.
    """

    space: list[str] = field(default_factory=list)
    trials: int | None = None
    timeout: float | None = None
    sampler: str | None = None
    pruner: str | None = None
    parallel: int | None = None
    study: str | None = None
    storage: str | None = None
    seed: int | None = None
    metric: str | None = None

    def __post_init__(self) -> None:
        def bad(name: str, want: str) -> ValueError:
            return ValueError(f"tune setting {name!r}: expected {want}, got {getattr(self, name)!r}")

        if isinstance(self.space, str) or not all(isinstance(e, str) for e in self.space):
            raise bad("space", "a list of NAME=EXPR strings")
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise bad("sampler", f"one of {list(SAMPLERS)}")
        if self.pruner is not None and self.pruner not in PRUNERS:
            raise bad("pruner", f"one of {list(PRUNERS)}")
        for name in ("trials", "parallel"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise bad(name, "an integer >= 1")
        if self.timeout is not None and (isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float))
                                         or not self.timeout > 0):
            raise bad("timeout", "a positive number of seconds")
        if self.study is not None and (not isinstance(self.study, str) or not self.study.strip()):
            raise bad("study", "a non-empty name")
        if self.metric is not None and not str(self.metric).startswith("val/"):
            raise bad("metric", "a validation metric such as 'val/accuracy' or 'val/loss'")

    @classmethod
    def from_table(cls, table: Mapping[str, Any], where: str = "[tune]") -> "TuneSettings":
        """Settings from a config file's ``[tune]`` table; errors name ``where`` and the key."""
        if not isinstance(table, Mapping):
            raise ValueError(f"{where}: expected a table of tune settings, got {table!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
        values = dict(table)
        space = values.get("space", [])
        if isinstance(space, Mapping):
            values["space"] = [f"{k}={v}" for k, v in space.items()]
        try:
            return cls(**values)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{where}: {exc}") from None

    def override(self, **values: Any) -> "TuneSettings":
        """A copy with every value that is not None (and a non-empty ``space``) replacing this one's."""
        over = {k: v for k, v in values.items() if v is not None and not (k == "space" and not v)}
        return replace(self, **over)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
