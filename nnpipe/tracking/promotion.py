"""The promotion gate, manual promotion and rollback of the ``champion`` alias.

Concurrency: the read-compare-move-record sequence runs under the store lock
(:func:`nnpipe.tracking.locking.store_lock`: an ``flock`` on a file next to a
SQLite database, or keyed by the server URI), so two runs finishing at once
are gated one after the other and the second compares against the first's
outcome; the champion can never end at the worse of the two. After moving the
alias the gate re-reads it, to detect a writer that bypasses the lock (the
MLflow UI, another tool) rather than silently record a wrong history.

Rollback loads the target version with ``mlflow.pyfunc.load_model`` and
predicts on its logged input example *before* taking the lock (loading can be
slow); it then re-checks under the lock that the champion did not move in the
meantime.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from nnpipe.tracking import history, integrity, registry
from nnpipe.tracking.errors import NotServableError, RollbackRefused, TrackingError
from nnpipe.tracking.locking import store_lock
from nnpipe.tracking.registry import CHAMPION, RUN_ID_TAG, alias_version, get_registered, get_version, version_number
from nnpipe.tracking.store import client

GATE_PREFIX = "nnpipe.gate."


@dataclass
class PromotionDecision:
    """What the gate decided for one version.

    Attributes
    ----------
    promoted : bool
        Whether ``version`` is now the champion.
    version : int
    score : float or None
        The version's value of ``metric`` (None if its run has none).
    champion_version : int or None
        The champion before the decision.
    champion_score : float or None
    metric : str
    greater_is_better : bool
    reason : str
    """

    promoted: bool
    version: int
    score: float | None
    champion_version: int | None
    champion_score: float | None
    metric: str
    greater_is_better: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def version_score(c: MlflowClient, mv: ModelVersion, metric: str) -> float | None:
    """The finite value of ``metric`` logged by the version's run, else None."""
    run_id = mv.run_id or mv.tags.get(RUN_ID_TAG)
    if not run_id:
        return None
    value = c.get_run(run_id).data.metrics.get(metric)
    return float(value) if value is not None and math.isfinite(value) else None


def _fmt(x: float | None) -> str:
    return "none" if x is None else f"{x:.6g}"


def _move_champion(c: MlflowClient, name: str, version: int) -> None:
    c.set_registered_model_alias(name, CHAMPION, str(version))
    now = alias_version(name, CHAMPION, c)
    if now != version:
        raise TrackingError(
            f"champion of {name!r} reads v{now} right after nnpipe set it to v{version}: "
            "another writer is moving aliases without nnpipe's lock"
        )


def promote_if_better(
    name: str,
    version: int,
    metric: str = "test/accuracy",
    greater_is_better: bool = True,
    actor: str | None = None,
) -> PromotionDecision:
    """Make ``version`` the champion if it beats the current one on ``metric`` (or there is none).

    Ties keep the current champion. The decision, both scores and the reason
    are recorded on the version as ``nnpipe.gate.*`` tags; a promotion is also
    recorded in the alias history.

    Parameters
    ----------
    name : str
    version : int
    metric : str
        A metric both versions' runs logged, e.g. ``test/accuracy`` or ``test/loss``.
    greater_is_better : bool
        Direction of ``metric`` (False for losses and errors).
    actor : str, optional
        Who (default ``NNPIPE_ACTOR`` or ``user@host``).

    Returns
    -------
    PromotionDecision
    """
    c = client()
    number = version_number(version)
    with store_lock():
        mv = get_version(name, number, c)
        score = version_score(c, mv, metric)
        champ = alias_version(name, CHAMPION, c)
        champ_score = None
        if champ is not None and champ != number:
            champ_score = version_score(c, get_version(name, champ, c), metric)
        direction = "higher" if greater_is_better else "lower"
        if score is None:
            promoted, reason = False, f"v{number} has no finite {metric!r} metric to compare"
        elif champ is None:
            promoted, reason = True, f"no champion yet; v{number} {metric}={_fmt(score)}"
        elif champ == number:
            promoted, reason = False, f"v{number} is already the champion"
        elif champ_score is None:
            promoted, reason = True, f"champion v{champ} has no finite {metric!r}; v{number} has {_fmt(score)}"
        elif (score > champ_score) if greater_is_better else (score < champ_score):
            promoted, reason = True, (f"v{number} {metric}={_fmt(score)} beats champion v{champ} "
                                      f"{_fmt(champ_score)} ({direction} is better)")
        else:
            promoted, reason = False, (f"v{number} {metric}={_fmt(score)} does not beat champion v{champ} "
                                       f"{_fmt(champ_score)} ({direction} is better)")
        if promoted:
            integrity.verify(name, number, c)  # never crown a version whose files changed since registration
            _move_champion(c, name, number)
            history.record(c, name, CHAMPION, champ, number, action="gate", reason=reason, actor=actor)
        tags = {
            "decision": "promoted" if promoted else "rejected",
            "metric": metric,
            "greater_is_better": str(greater_is_better),
            "score": _fmt(score),
            "champion_version": "none" if champ is None else str(champ),
            "champion_score": _fmt(champ_score),
            "reason": reason,
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        for key, value in tags.items():
            c.set_model_version_tag(name, str(number), GATE_PREFIX + key, value)
    return PromotionDecision(promoted, number, score, champ, champ_score, metric, greater_is_better, reason)


def promote(
    name: str, version: int, reason: str | None = None, actor: str | None = None, check: bool = True
) -> int | None:
    """Make ``version`` the champion without the gate (a human decision); returns the previous champion.

    Parameters
    ----------
    name : str
    version : int
    reason : str, optional
        Kept in the alias history.
    actor : str, optional
    check : bool
        First load the version and predict on its input example (as rollback does).

    Raises
    ------
    UnknownModelError, UnknownVersionError
    NotServableError
        ``check`` is on and the version cannot load or predict.
    """
    c = client()
    number = version_number(version)
    get_version(name, number, c)
    if check and alias_version(name, CHAMPION, c) != number:
        try:
            check_servable(name, number)
        except NotServableError as exc:
            raise NotServableError(f"refusing to promote: {exc}") from exc
    with store_lock():
        get_version(name, number, c)
        previous = alias_version(name, CHAMPION, c)
        if previous != number:
            _move_champion(c, name, number)
            history.record(c, name, CHAMPION, previous, number, action="promote",
                           reason=reason or "manual promotion", actor=actor)
    return previous


def check_servable(name: str, version: int) -> Any:
    """Load version ``version`` of ``name`` and predict on its input example; returns the predictions.

    Raises
    ------
    NotServableError
        If it has no input example, fails to load or to predict, or predicts
        the wrong number of rows or non-finite values.
    """
    uri = f"models:/{name}/{int(version)}"
    try:
        model = integrity.load_model(name, int(version))  # digests checked first: no tampered file loads
    except integrity.TamperedModel as exc:
        raise NotServableError(str(exc)) from exc
    except Exception as exc:
        raise NotServableError(f"{uri} failed to load: {type(exc).__name__}: {exc}") from exc
    example = model.input_example
    if example is None:
        raise NotServableError(f"{uri} has no input example to test a prediction on")
    try:
        pred = model.predict(example)
    except Exception as exc:
        raise NotServableError(f"{uri} failed to predict on its input example: {type(exc).__name__}: {exc}") from exc
    values = np.asarray(pred)
    if len(values) != len(example):
        raise NotServableError(f"{uri} returned {len(values)} predictions for {len(example)} example rows")
    if values.dtype.kind in "fc" and not np.isfinite(values).all():
        raise NotServableError(f"{uri} predicts non-finite values on its input example: {values.tolist()!r}")
    return pred


def rollback(
    name: str, to: int | None = None, reason: str | None = None, actor: str | None = None
) -> int:
    """Move ``champion`` back to ``to`` (default: the previous champion in the history).

    The target is loaded and run on its input example first; a target that
    cannot serve is refused and the champion stays where it is.

    Returns
    -------
    int
        The new champion version.

    Raises
    ------
    UnknownModelError, UnknownVersionError
    RollbackRefused
        No previous champion, target already champion, target cannot serve,
        or the champion moved while the target was being checked.
    """
    c = client()
    get_registered(name, c)
    current = alias_version(name, CHAMPION, c)
    if to is None:
        target = registry.previous_champion(name, current)
        if target is None:
            raise RollbackRefused(
                f"model {name!r} has no previous champion in its history (champion: "
                f"{'none' if current is None else f'v{current}'}); pass --to VERSION"
            )
    else:
        target = version_number(to)
    get_version(name, target, c)
    if target == current:
        raise RollbackRefused(f"v{target} of {name!r} is already the champion")
    try:
        check_servable(name, target)
    except NotServableError as exc:
        raise RollbackRefused(f"refusing to roll back: {exc}") from exc
    with store_lock():
        now = alias_version(name, CHAMPION, c)
        if now != current:
            raise RollbackRefused(
                f"champion of {name!r} moved from v{current} to v{now} while v{target} was being checked; "
                "look at `nnpipe history` and retry"
            )
        _move_champion(c, name, target)
        history.record(c, name, CHAMPION, current, target, action="rollback",
                       reason=reason or "rollback", actor=actor)
    return target
