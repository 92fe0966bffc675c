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

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from nnpipe.tracking import history, integrity, story
from nnpipe.tracking.errors import NotServableError, PromotionRefused, RollbackRefused, TrackingError
from nnpipe.tracking.locking import store_lock
from nnpipe.tracking.registry import (
    CHAMPION, RUN_ID_TAG, alias_history, alias_version, get_registered, get_version, previous_champion, sync_aliases,
    sync_aliases_locked, version_number,
)
from nnpipe.tracking.store import client



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
    outside_moves : list of str
        Alias moves made outside nnpipe and noticed by this gate (recorded in
        the history before deciding), e.g. ``champion v1 -> v3``.
    same_split : bool
        ``champion_score`` is the champion evaluated on the candidate's own
        test split (a warm-started run), not the score its own run recorded.
    """

    promoted: bool
    version: int
    score: float | None
    champion_version: int | None
    champion_score: float | None
    metric: str
    greater_is_better: bool
    reason: str
    outside_moves: list[str] = field(default_factory=list)
    same_split: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def describe_outside(events: list[dict[str, Any]]) -> list[str]:
    """``champion v1 -> v3 (noticed 2026-11-29 05:53:02 UTC)`` for each outside-move event."""
    def v(x: Any) -> str:
        return "none" if x is None else f"v{x}"
    return [f"{e['alias']} {v(e['from'])} -> {v(e['to'])} (noticed {story.when(e['time'])} UTC, who: unknown)"
            for e in events]


def version_score(c: MlflowClient, mv: ModelVersion, metric: str) -> float | None:
    """The finite value of ``metric`` logged by the version's run, else None."""
    run_id = mv.run_id or mv.tags.get(RUN_ID_TAG)
    if not run_id:
        return None
    value = c.get_run(run_id).data.metrics.get(metric)
    return float(value) if value is not None and math.isfinite(value) else None


def _score_of(c: MlflowClient, name: str, version: int | None, metric: str) -> float | None:
    return None if version is None else version_score(c, c.get_model_version(name, str(version)), metric)


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


def _record_champion_move(c: MlflowClient, name: str, previous: int | None, version: int, action: str,
                          reason: str, actor: str | None, metric: str | None = None) -> dict[str, Any]:
    """Move ``champion`` to ``version``, record it with both scores, and rewrite the descriptions."""
    if metric is None:
        metric, _ = story.promotion_metric(get_registered(name, c).tags)
    _move_champion(c, name, version)
    event = history.record(c, name, CHAMPION, previous, version, action=action, reason=reason, actor=actor,
                           metric=metric, from_score=_score_of(c, name, previous, metric),
                           to_score=_score_of(c, name, version, metric))
    return event


def promote_if_better(
    name: str,
    version: int,
    metric: str = "test/accuracy",
    greater_is_better: bool = True,
    actor: str | None = None,
    baseline: tuple[int, float] | None = None,
) -> PromotionDecision:
    """Make ``version`` the champion if it beats the current one on ``metric`` (or there is none).

    Ties keep the current champion. The decision, both scores and the reason
    are recorded on the version as the ``nnpipe.gate`` and ``nnpipe.gate.reason`` tags (the gate's verdict
    at that time; the version's current champion status is the tag
    ``nnpipe.champion`` and its description); a promotion is also recorded in
    the alias history. A champion moved outside nnpipe since the last recorded
    move is recorded first and named in the decision.

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
    baseline : (int, float), optional
        ``(champion version, its metric on this version's test split)``: a
        warm-started run evaluates the champion it started from on its own
        fresh test split, so both scores come from the same rows. Used when
        that version is still the champion at the gate; otherwise (the
        champion moved meanwhile) the new champion's recorded score decides,
        and the reason says so.

    Returns
    -------
    PromotionDecision
    """
    c = client()
    number = version_number(version)
    with store_lock():
        mv = get_version(name, number, c)
        outside = describe_outside(sync_aliases_locked(c, name))
        c.set_registered_model_tag(name, story.METRIC_TAG, metric)
        c.set_registered_model_tag(name, story.DIRECTION_TAG, str(bool(greater_is_better)))
        score = version_score(c, mv, metric)
        champ = alias_version(name, CHAMPION, c)
        champ_score, same_split, note = None, False, ""
        if champ is not None and champ != number:
            champ_score = version_score(c, get_version(name, champ, c), metric)
            if baseline is not None and baseline[0] == champ and math.isfinite(baseline[1]):
                # the same rows for both: the champion's own run scored it on an older split
                note = f" on this run's test split (v{champ}'s own run recorded {_fmt(champ_score)})"
                champ_score, same_split = float(baseline[1]), True
            elif baseline is not None:
                note = (f" (its own run's score: the champion moved from v{baseline[0]} to v{champ} "
                        "while this run trained)")
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
                                      f"{_fmt(champ_score)}{note} ({direction} is better)")
        else:
            promoted, reason = False, (f"v{number} {metric}={_fmt(score)} does not beat champion v{champ} "
                                       f"{_fmt(champ_score)}{note} ({direction} is better)")
        if outside:
            reason += "; note: moved outside nnpipe before this gate: " + "; ".join(outside)
        if promoted:
            integrity.verify(name, number, c)  # never crown a version whose files changed since registration
            _record_champion_move(c, name, champ, number, "gate", reason, actor, metric)
        # One readable tag and its sentence (the versions list stays short); the description has the rest.
        verdict = "promoted" if promoted else "rejected"
        c.set_model_version_tag(name, str(number), story.GATE_TAG, story.gate_line(
            verdict, history.now_iso(), metric, _fmt(score), "none" if champ is None else str(champ),
            _fmt(champ_score)))
        c.set_model_version_tag(name, str(number), story.GATE_REASON_TAG, reason[:history.MAX_REASON])
        story.refresh(c, name, {number} | ({champ} if champ is not None else set()))
    return PromotionDecision(promoted, number, score, champ, champ_score, metric, greater_is_better, reason, outside,
                             same_split)


def gate_verdict(mv: ModelVersion) -> tuple[str | None, str]:
    """The gate's decision on a version (``promoted``, ``rejected`` or None if never gated) and its reason."""
    gate = story.gate_record(mv.tags)
    return gate.get("decision"), gate.get("reason", "")


def promote(
    name: str, version: int, reason: str | None = None, actor: str | None = None, check: bool = True,
    force: bool = False,
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
    force : bool
        Promote even though the gate rejected this version (the gate's reason
        is kept in the history).

    Raises
    ------
    UnknownModelError, UnknownVersionError
    PromotionRefused
        The gate rejected ``version`` and ``force`` is off; the message says what the gate said.
    NotServableError
        ``check`` is on and the version cannot load or predict.
    """
    c = client()
    number = version_number(version)
    mv = get_version(name, number, c)
    decision, gate_reason = gate_verdict(mv)
    overruled = decision == "rejected"
    if overruled and not force and alias_version(name, CHAMPION, c) != number:
        raise PromotionRefused(
            f"the promotion gate rejected v{number} of {name!r}: {gate_reason}; pass --force to promote it anyway"
        )
    if check and alias_version(name, CHAMPION, c) != number:
        try:
            check_servable(name, number)
        except NotServableError as exc:
            raise NotServableError(f"refusing to promote: {exc}") from exc
    with store_lock():
        get_version(name, number, c)
        sync_aliases_locked(c, name)
        previous = alias_version(name, CHAMPION, c)
        if previous != number:
            why = reason or "manual promotion"
            if overruled:
                why += f" (forced over the gate, which rejected it: {gate_reason})"
            _record_champion_move(c, name, previous, number, "promote", why, actor)
            story.refresh(c, name, {number} | ({previous} if previous is not None else set()))
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

    Moves made outside nnpipe are recorded first, so the previous champion is
    the one before wherever the champion really is now. The target is loaded
    and run on its input example first; a target that cannot serve is refused
    and the champion stays where it is.

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
    sync_aliases(name)
    current = alias_version(name, CHAMPION, c)
    if to is None:
        existing = {int(v.version) for v in c.search_model_versions(f"name='{name}'")}
        target = previous_champion(name, current, existing)
        if target is None:
            gone = sorted(set(history.champion_stack(alias_history(name, CHAMPION))) - existing)
            deleted = f"; deleted since their reign: {', '.join(f'v{v}' for v in gone)}" if gone else ""
            raise RollbackRefused(
                f"model {name!r} has no previous champion in its history (champion: "
                f"{'none' if current is None else f'v{current}'}{deleted}); pass --to VERSION"
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
        _record_champion_move(c, name, current, target, "rollback", reason or "rollback", actor)
        story.refresh(c, name, {target} | ({current} if current is not None else set()))
    return target
