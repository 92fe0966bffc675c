"""What a resumed study keeps from its first invocation: its space, sampler, pruner and metric.

The first invocation stores them as user attributes of the Optuna study
(``nnpipe.space``, ``nnpipe.sampler``, ``nnpipe.pruner``, ``nnpipe.metric``).
``--study NAME`` without a space continues with the stored one, and so for the
other three. A space or metric given on a resume must be the study's own:
another one would put values of different searches side by side and steer
the sampler with trials it cannot compare, so it is refused (one line, before
any run, study or cluster starts). The sampler and the pruner may change on a
resume (random start-up trials, then TPE, is a common pattern).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from nnpipe.tuning.space import SpaceError, parse_space
from nnpipe.tuning.study import get_storage, journal_path

SPACE_ATTR = "nnpipe.space"
SAMPLER_ATTR = "nnpipe.sampler"
PRUNER_ATTR = "nnpipe.pruner"
METRIC_ATTR = "nnpipe.metric"
DEFAULTS = {"sampler": "tpe", "pruner": "median"}


def _may_exist(storage: str) -> bool:
    """False when the storage is a file that does not exist yet (so asking it would only create it)."""
    journal = journal_path(storage)
    if journal is not None:
        return Path(journal).exists()
    if storage.startswith("sqlite:///"):
        path = storage[len("sqlite:///"):]
        return path in ("", ":memory:") or Path(path).exists()
    return True


def stored_attrs(name: str, storage: str) -> tuple[int, dict[str, Any]] | None:
    """``(study id, user attributes)`` of study ``name`` in ``storage``, or None when there is no such study."""
    if not _may_exist(storage):
        return None
    store = get_storage(storage)
    try:
        sid = store.get_study_id_from_name(name)
    except KeyError:
        return None
    return sid, store.get_study_user_attrs(sid)


def check_space(name: str, stored: Mapping[str, Any], space: list[str]) -> None:
    """Raise :class:`SpaceError` (one line) when ``space`` is not the stored space of study ``name``."""
    theirs = list(stored.get(SPACE_ATTR) or [])
    if not space or not theirs:
        return
    mine_d, theirs_d = parse_space(space).distributions, parse_space(theirs).distributions
    if mine_d.keys() == theirs_d.keys() and all(mine_d[k] == theirs_d[k] for k in mine_d):
        return
    by_name = {e.partition("=")[0].strip().replace("-", "_"): e for e in space}
    theirs_by_name = {e.partition("=")[0].strip().replace("-", "_"): e for e in theirs}
    if mine_d.keys() - theirs_d.keys():
        diff = f"{by_name[sorted(mine_d.keys() - theirs_d.keys())[0]]!r} is not in it"
    elif theirs_d.keys() - mine_d.keys():
        diff = f"{theirs_by_name[sorted(theirs_d.keys() - mine_d.keys())[0]]!r} is missing"
    else:
        k = next(k for k in mine_d if mine_d[k] != theirs_d[k])
        diff = f"{by_name[k]!r} where the study has {theirs_by_name[k]!r}"
    raise SpaceError(f"study {name!r} searches {', '.join(theirs)}; the given space differs ({diff}): omit the "
                     "space to continue the study with its own, or give a new study name")


def check_metric(name: str, stored: Mapping[str, Any], metric: str | None) -> None:
    """Raise ``ValueError`` (one line) when ``metric`` is not the metric study ``name`` optimises."""
    theirs = stored.get(METRIC_ATTR)
    if metric is not None and theirs is not None and metric != theirs:
        raise ValueError(f"study {name!r} optimises {theirs!r}, not {metric!r}: their values cannot be compared; "
                         "omit the metric to continue the study, or give a new study name")


def resolve(name: str | None, stored: Mapping[str, Any] | None, *, space: list[str], sampler: str | None,
            pruner: str | None, metric: str | None) -> dict[str, Any]:
    """What this invocation searches with: given values (checked against a resumed study), else stored, else defaults.

    Returns ``{"space", "sampler", "pruner", "metric"}`` (``metric`` None: the task's default).
    """
    stored = stored or {}
    if name is not None and stored:
        check_space(name, stored, space)
        check_metric(name, stored, metric)
    return {"space": list(space) or list(stored.get(SPACE_ATTR) or []),
            "sampler": sampler or stored.get(SAMPLER_ATTR) or DEFAULTS["sampler"],
            "pruner": pruner or stored.get(PRUNER_ATTR) or DEFAULTS["pruner"],
            "metric": metric or stored.get(METRIC_ATTR)}


__all__ = ["METRIC_ATTR", "PRUNER_ATTR", "SAMPLER_ATTR", "SPACE_ATTR", "check_metric", "check_space", "resolve",
           "stored_attrs"]
