"""The champion's story where MLflow users look: the registered model's and each version's description.

MLflow renders both descriptions as markdown on the model pages. nnpipe
regenerates them after every alias move it makes or notices (callers hold
the store lock), from the history (:mod:`nnpipe.tracking.history`) and the
versions' runs, so hand edits there are overwritten; the history itself is
the ledger, not this text.

* Registered model: the champion and candidate as of the last move nnpipe
  recorded (with that move's time), the gate metric, and a table of
  ``champion`` moves, newest first: when, move, from, to, who, why, and the
  metric on both sides.
* Each version: its final metrics, the gate's decision, and when it became
  and stopped being champion. The same champion status is kept in the
  version tag ``nnpipe.champion`` (tags show in ``nnpipe models``).

Every statement about the champion carries its time ("champion from
2026-12-05 19:50:01 UTC (gate)", "as of ..."), never a bare "is champion"
or "was champion": a text written at one move stays true after the next
one, even before nnpipe has noticed it. The MLflow UI's ``@champion`` badge
is the live pointer; these texts are its dated record, rewritten within
seconds of a move by :func:`nnpipe.tracking.pages.sweep` (at the start of
every nnpipe command) and :func:`nnpipe.tracking.pages.watch`.

The gate's verdict on a version is one readable tag, ``nnpipe.gate``
(``promoted 2026-12-05 19:50:01 UTC · test/accuracy 0.9667 vs v1 0.9333``),
and its sentence ``nnpipe.gate.reason``; :func:`gate_record` reads it back
(and the ``nnpipe.gate.*`` tags older versions wrote).
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

import nnpipe.tracking.history as history

CHAMPION = "champion"
RUN_ID_TAG = "nnpipe.run_id"
METRIC_TAG = "nnpipe.promotion_metric"
DIRECTION_TAG = "nnpipe.greater_is_better"
STATUS_TAG = "nnpipe.champion"
DEFAULT_METRIC = "test/accuracy"
MAX_DESCRIPTION = 4800  # the registry's description columns hold 5000 characters
SUMMARY_PREFIXES = ("test/", "val/")
GATE_TAG = "nnpipe.gate"
GATE_REASON_TAG = "nnpipe.gate.reason"
LEGACY_GATE_PREFIX = "nnpipe.gate."  # one tag per field, written by nnpipe before the single tag
_GATE_LINE = re.compile(r"^(?P<decision>\w+) (?P<time>\S+ \S+) UTC · (?P<metric>\S+) (?P<score>\S+) "
                        r"vs (?P<champion_version>\S+) (?P<champion_score>\S+)$")


RECORDED_TAG = "nnpipe.recorded_aliases"  # the aliases the history and these texts are written up to


def aliases_text(aliases: dict[str, Any]) -> str:
    """``candidate:v3 champion:v2`` (sorted), the value of :data:`RECORDED_TAG`."""
    return " ".join(f"{a}:v{int(v)}" for a, v in sorted(aliases.items()))


def mark_recorded(c: MlflowClient, name: str, aliases: dict[str, Any]) -> None:
    """Note that the history and pages of ``name`` are written up to ``aliases`` (caller holds the lock).

    :func:`nnpipe.tracking.pages.sweep` compares it with the live aliases: one search, no lock, when nothing moved.
    """
    c.set_registered_model_tag(name, RECORDED_TAG, aliases_text(aliases))


def promotion_metric(tags: dict[str, str]) -> tuple[str, bool]:
    """The metric the gate last used on this model (from its tags), and its direction."""
    return tags.get(METRIC_TAG, DEFAULT_METRIC), tags.get(DIRECTION_TAG, "True") == "True"


def fmt(x: Any) -> str:
    if x is None:
        return "–"
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    return "–" if not math.isfinite(x) else f"{x:.4g}"


def when(iso: str | None) -> str:
    """``2026-11-29T05:53:02.123+00:00`` -> ``2026-11-29 05:53:02``."""
    return (iso or "")[:19].replace("T", " ")


def gate_line(decision: str, time: str, metric: str, score: str, champion: str, champion_score: str) -> str:
    """The ``nnpipe.gate`` tag: ``promoted 2026-12-05 19:50:01 UTC · test/accuracy 0.9667 vs v1 0.9333``."""
    champ = champion if champion.startswith(("v", "none")) else f"v{champion}"
    return f"{decision} {when(time)} UTC · {metric} {score} vs {champ} {champion_score}"


def gate_record(tags: dict[str, str]) -> dict[str, str]:
    """The gate's verdict from a version's tags (empty if never gated).

    Keys: ``decision``, ``time``, ``metric``, ``score``, ``champion_version``
    (a number or ``none``), ``champion_score``, ``reason``.
    """
    line = tags.get(GATE_TAG)
    if line is None:  # written by an older nnpipe: one tag per field
        return {k[len(LEGACY_GATE_PREFIX):]: v for k, v in tags.items()
                if k.startswith(LEGACY_GATE_PREFIX) and k != GATE_REASON_TAG}
    m = _GATE_LINE.match(line)
    out = dict(m.groupdict()) if m else {"decision": line.split(" ", 1)[0]}
    if "champion_version" in out:
        out["champion_version"] = out["champion_version"].removeprefix("v")
    out["reason"] = tags.get(GATE_REASON_TAG, "")
    return out


def _cell(text: Any) -> str:
    """A markdown table cell: no pipes or line breaks to break the row."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip()


# MLflow's description renderer draws tables without cell padding, so the columns ran
# together ("v1unknown"); two no-break spaces after each cell keep them apart.
PAD = "&nbsp;&nbsp;"


def _row(cells: list[str]) -> str:
    """A markdown table row whose cells stay apart in the MLflow UI."""
    return "| " + " | ".join(f"{c}{PAD}" for c in cells[:-1]) + f" | {cells[-1]} |"


def _v(version: Any) -> str:
    return "–" if version is None else f"v{version}"


def reigns(events: list[dict[str, Any]], alias: str = CHAMPION) -> dict[int, list[dict[str, Any]]]:
    """Per version, its reigns as ``alias``: ``{"start": event, "end": event or None}``."""
    out: dict[int, list[dict[str, Any]]] = {}
    holder: int | None = None
    for e in events:
        if e.get("alias") != alias:
            continue
        if holder is not None and out.get(holder) and out[holder][-1]["end"] is None:
            out[holder][-1]["end"] = e
        holder = e.get("to")
        if holder is not None:
            out.setdefault(int(holder), []).append({"start": e, "end": None})
    return out


def _move(e: dict[str, Any]) -> str:
    return {"gate": "gate", "promote": "promote", "rollback": "rollback", "outside": "outside nnpipe",
            "register": "register"}.get(e.get("action", ""), str(e.get("action", "")))


def _by(e: dict[str, Any]) -> str:
    """``gate by prefect:iris-...``; an outside move says who is unknown once, not twice."""
    if e.get("action") == "outside":
        return "outside nnpipe, by whom unknown"
    return f"{_move(e)} by {e.get('actor', '?')}"


def _who(e: dict[str, Any]) -> str:
    return "unknown" if e.get("action") == "outside" else str(e.get("actor", ""))


def status_short(version: int, aliases: dict[str, Any], spans: list[dict[str, Any]]) -> str:
    """For a table cell: ``since 11-29 06:21`` (champion now), ``11-29 06:11 – 06:21`` (last reign), or empty.

    Read live (``nnpipe models``), so "since" is current there.
    """
    if not spans:
        return ""
    last = spans[-1]
    start = when(last["start"].get("time"))[5:16]
    if last["end"] is None and str(aliases.get(CHAMPION)) == str(version):
        return f"since {start}"
    end = when(last["end"].get("time"))[5:16] if last["end"] is not None else "?"
    if end[:5] == start[:5]:
        end = end[6:]  # same day: the time is enough
    return f"{start} – {end}" + (f" (+{len(spans) - 1})" if len(spans) > 1 else "")


def model_markdown(name: str, aliases: dict[str, Any], events: list[dict[str, Any]], metric: str,
                   greater: bool, ledger: str | None = None) -> str:
    """The registered model's description: current aliases and the champion history table."""
    champ, cand = aliases.get(CHAMPION), aliases.get("candidate")
    moves = [e for e in events if e.get("alias") == CHAMPION]
    # Dated, so that it stays true after the next move even before nnpipe notices it; the
    # @champion badge in the page header is the live pointer.
    since = f" (set {when(moves[-1].get('time'))} UTC, {_move(moves[-1])})" if moves and champ is not None else ""
    checked = when(history.now_iso())
    lines = [f"**Champion as of {checked} UTC:** {_v(champ)}{since} · **candidate:** {_v(cand)} · "
             f"**gate metric:** `{metric}` ({'higher' if greater else 'lower'} is better)", ""]
    lines += [f"### Champion history ({len(moves)} move{'s' if len(moves) != 1 else ''}, newest first)", ""]
    if not moves:
        lines.append("No champion yet: the gate promotes the first version with a finite "
                     f"`{metric}`, or `nnpipe promote {name} VERSION`.")
    header = [_row(["when (UTC)", "move", "from", "to", "who", "why", f"{_cell(metric)}: from → to"]),
              "|---|---|---|---|---|---|---|"]
    rows: list[str] = []
    footer = [""]
    size = sum(len(x) + 1 for x in lines + header) + 400
    for e in reversed(moves):
        row = _row([when(e.get("time")), _move(e), _v(e.get("from")), _v(e.get("to")), _cell(_who(e)),
                    _cell(e.get("reason", ""))[:300], f"{fmt(e.get('from_score'))} → {fmt(e.get('to_score'))}"])
        if size + len(row) > MAX_DESCRIPTION:
            footer.append(f"*{len(moves) - len(rows)} older move(s) not shown here.*")
            break
        rows.append(row)
        size += len(row) + 1
    if moves:
        lines += header + rows
    footer.append(f"*Written by nnpipe on every move (edits here are overwritten). Every alias move, "
                  f"machine-readable: `nnpipe history {name}`"
                  + (f", or `{history.ARTIFACT}` of run `{ledger}` in experiment `{history.LEDGER_EXPERIMENT}`"
                     if ledger else "") + ".*")
    return "\n".join(lines + footer)


def status_text(version: int, aliases: dict[str, Any], spans: list[dict[str, Any]]) -> str:
    """``champion from <time> UTC (gate by ...)`` / ``... until <time> UTC (replaced by v4: rollback)`` / ``never champion``.

    Only dated facts: an open reign says when it began, never "is champion"
    (which would turn false at the next move, before anyone rewrote it).
    """
    if not spans:
        return "never champion"
    parts = []
    for s in spans:
        start = f"{when(s['start'].get('time'))} UTC ({_by(s['start'])})"
        end = s["end"]
        if end is None:
            parts.append(f"champion from {start}")
        else:
            by = "removed" if end.get("to") is None else f"replaced by v{end.get('to')}"
            parts.append(f"champion from {start} until {when(end.get('time'))} UTC ({by}: {_move(end)})")
    return "; ".join(parts)


def version_markdown(name: str, version: int, run: Any, tags: dict[str, str], status: str,
                     aliases_of_version: list[str]) -> str:
    """A version's description: a one-line summary (what the versions table shows), then the details."""
    gate = gate_record(tags)
    metric = gate.get("metric", DEFAULT_METRIC)
    metrics = run.data.metrics if run is not None else {}
    # No "champion"/"was champion" here: the summary is written at one move and read after the
    # next; the reign's dates are in the **Champion** line below and the badge is live.
    summary = " · ".join(x for x in (
        f"{metric} {fmt(metrics.get(metric))}" if metric in metrics else "",
        f"gate: {gate['decision']}" if gate.get("decision") else "not gated") if x)
    lines = [summary, "", f"**{name} v{version}**"
             + (f" · aliases as of {when(history.now_iso())} UTC: {', '.join(aliases_of_version)}"
                if aliases_of_version else "")]
    if run is not None:
        shown = [f"`{k}` {fmt(v)}" for k, v in sorted(metrics.items()) if k.startswith(SUMMARY_PREFIXES)]
        name_of_run = run.data.tags.get("mlflow.runName", run.info.run_id)
        lines += ["", f"**Run:** {name_of_run} (`{run.info.run_id}`)",
                  "", "**Final metrics:** " + (" · ".join(shown) if shown else "none logged")]
    if gate:
        lines += ["", f"**Gate ({when(gate.get('time'))} UTC):** {gate.get('decision', '?')} — {gate.get('reason', '')}"]
    else:
        lines += ["", "**Gate:** not gated"]
    lines += ["", f"**Champion:** {status}"]
    return "\n".join(lines)[:MAX_DESCRIPTION]


def run_outcome(model_name: str, version: int | str, promoted: bool, reason: str,
                model_link: str | None = None) -> tuple[dict[str, str], str, str]:
    """The run's record of its gate: a tag and a markdown sentence, both dated, so neither goes stale.

    Returns ``({"nnpipe.gate": ...}, sentence, "<time> UTC")``: "promoted to champion at
    <time> UTC" stays true after a rollback; where ``@champion`` is now is
    on the model page (``model_link``).
    """
    at = f"{when(history.now_iso())} UTC"
    verdict = f"promoted to champion at {at}" if promoted else f"not promoted at {at}"
    tag = f"{model_name} v{version}: {verdict} ({reason})"
    where = f" Where `@champion` points now: [{model_name}]({model_link})." if model_link else ""
    done = f"promoted it to champion at {at}" if promoted else f"did not promote it at {at}"
    sentence = f"Registered as **{model_name} v{version}**; the gate {done} ({_cell(reason)}).{where}"
    return {GATE_TAG: tag[:MAX_DESCRIPTION]}, sentence, at


def refresh(c: MlflowClient, name: str, versions: Iterable[int] = (), events: list[dict[str, Any]] | None = None) -> None:
    """Rewrite ``name``'s description and those of ``versions`` (caller holds the store lock)."""
    events = history.load_events(c, name) if events is None else events
    model = c.get_registered_model(name)
    metric, greater = promotion_metric(model.tags)
    c.update_registered_model(name, description=model_markdown(
        name, model.aliases, events, metric, greater, history.ledger_run_id(c, name)))
    mark_recorded(c, name, model.aliases)  # the pages now describe these aliases: a sweep skips this model
    spans = reigns(events)
    by_version: dict[str, list[str]] = {}
    for alias, v in model.aliases.items():
        by_version.setdefault(str(v), []).append(alias)
    for number in sorted({int(v) for v in versions}):
        try:
            mv = c.get_model_version(name, str(number))
        except MlflowException:
            continue  # deleted meanwhile: nothing to describe
        run = None
        run_id = mv.run_id or mv.tags.get(RUN_ID_TAG)
        if run_id:
            try:
                run = c.get_run(run_id)
            except MlflowException:
                run = None
        status = status_text(number, model.aliases, spans.get(number, []))
        c.set_model_version_tag(name, str(number), STATUS_TAG, status)
        c.update_model_version(name, str(number), description=version_markdown(
            name, number, run, mv.tags, status, sorted(by_version.get(str(number), []))))
