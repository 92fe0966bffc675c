"""What the study's parent run keeps: the best trial, a summary table, Optuna's plots; the best model registered.

Plots come from ``optuna.visualization.matplotlib`` (optimisation history,
intermediate values, parameter importances, parallel coordinates); one that
the study cannot draw yet (importances need two finished trials that differ)
is skipped and named in the ``nnpipe.tune.plots_skipped`` tag.
"""

from __future__ import annotations

import logging
import math
import tempfile
import warnings
from pathlib import Path
from typing import Any

import optuna

from nnpipe import tracking
from nnpipe.tuning.runner import EPOCHS_ATTR, MODEL_ATTR, RUN_ATTR, kept_model

# Study attributes (a finished trial's own attributes are read-only).
REGISTERED_ATTR = "nnpipe.registered.trial_{}"
log = logging.getLogger("nnpipe.tuning")

PLOTS = {
    "optimization_history": "plot_optimization_history",
    "intermediate_values": "plot_intermediate_values",
    "param_importances": "plot_param_importances",
    "parallel_coordinate": "plot_parallel_coordinate",
}


def summary_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, epochs, params, MLflow run."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name, "value": t.value,
                     "epochs": t.user_attrs.get(EPOCHS_ATTR), "params": t.params,
                     "run_id": t.user_attrs.get(RUN_ATTR), "note": t.user_attrs.get("nnpipe.failure", "")})
    return rows


def summary_markdown(study: optuna.Study, metric: str) -> str:
    """The summary table in markdown (the parent run's ``tune/summary.md`` and the Prefect artefact)."""
    lines = [f"| trial | state | {metric} | epochs | params | MLflow run |", "|---|---|---|---|---|---|"]
    for r in summary_rows(study):
        value = "" if r["value"] is None else f"{r['value']:.4f}"
        lines.append(f"| {r['number']} | {r['state']} | {value} | {r['epochs'] if r['epochs'] is not None else ''} "
                     f"| `{r['params']}` | `{r['run_id'] or ''}` |")
    return "\n".join(lines) + "\n"


def log_study_artifacts(study: optuna.Study, parent_run_id: str, metric: str) -> list[str]:
    """Summary table (CSV and markdown) and Optuna's plots as artefacts of the parent run; returns the names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    logged, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="nnpipe-tune-") as tmp:
        out = Path(tmp)
        (out / "summary.md").write_text(summary_markdown(study, metric))
        study.trials_dataframe().to_csv(out / "trials.csv", index=False)
        for name in ("summary.md", "trials.csv"):
            tracking.nested.log_artifact(parent_run_id, out / name, "tune")
            logged.append(f"tune/{name}")
        for name, fn in PLOTS.items():
            try:
                with warnings.catch_warnings():
                    # ExperimentalWarning (the API, not the figure); "tight layout not applied" when
                    # many trials crowd the axes (the figure is still drawn and saved)
                    warnings.simplefilter("ignore")
                    ax = getattr(vis, fn)(study)
                    fig = (ax.flat[0] if hasattr(ax, "flat") else ax).get_figure()
                    fig.set_size_inches(8, 5)
                    fig.tight_layout()
                fig.savefig(out / f"{name}.png", dpi=100)
                plt.close(fig)
            except Exception as exc:  # too few finished trials for this plot: skip it, say which
                skipped.append(f"{name}: {type(exc).__name__}: {exc}".splitlines()[0][:200])
                plt.close("all")
                continue
            tracking.nested.log_artifact(parent_run_id, out / f"{name}.png", "tune")
            logged.append(f"tune/{name}.png")
    if skipped:
        tracking.set_run_tags(parent_run_id, {"nnpipe.tune.plots_skipped": "; ".join(skipped)})
    return logged


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best COMPLETE trial, ties going to the one that finished first (whose model was kept), or None."""
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.value is not None and math.isfinite(t.value)]
    if not done:
        return None
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    return min(done, key=lambda t: (sign * t.value, t.datetime_complete, t.number))


def register_best(study: optuna.Study, best: optuna.trial.FrozenTrial, model: Any, raw_example: Any,
                  model_name: str, metric: str, greater_is_better: bool, actor: str,
                  tags: dict[str, Any]) -> dict[str, Any]:
    """Log the best trial's model to its run, register it and put it through the promotion gate (once per trial).

    ``model`` is the trained model when this invocation trained the best trial, else None: an
    earlier invocation did, and registered it then (the best only improves, so it was the best
    at that invocation's end too). Returns ``{"version", "promoted", "decision",
    "champion_version", "new"}``, or None when no model is at hand (an earlier invocation that
    stopped before its end).
    """
    version = study.user_attrs.get(REGISTERED_ATTR.format(best.number))
    if version is not None:
        champion = tracking.alias_version(model_name, tracking.CHAMPION)
        return {"version": str(version), "promoted": False, "new": False,
                "champion_version": None if champion is None else str(champion),
                "decision": f"best trial {best.number} is already registered as v{version}; nothing to gate"}
    uri = study.user_attrs.get(MODEL_ATTR.format(best.number))  # kept by an interrupted invocation
    if model is None and uri is None:
        return None
    run_id = best.user_attrs[RUN_ATTR]
    uri = uri or kept_model(study, best.number, model, raw_example)
    version = tracking.register_model(uri, model_name, run_id, {**tags, "nnpipe.tune.study": study.study_name,
                                                                "nnpipe.tune.trial": best.number})
    study.set_user_attr(REGISTERED_ATTR.format(best.number), str(version))
    decision = tracking.promote_if_better(model_name, version, f"test/{metric}", greater_is_better, actor)
    champion = version if decision.promoted else decision.champion_version
    return {"version": str(version), "promoted": bool(decision.promoted), "decision": decision.reason, "new": True,
            "champion_version": None if champion is None else str(champion)}


def conclude(study: optuna.Study, parent_run_id: str, metric: str, epochs: int, kept: tuple[int, Any] | None,
             raw_example: Any, model_name: str, gate_metric: str, greater_is_better: bool, actor: str,
             tags: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None, list[str]]:
    """The parent run's counts, best trial, artefacts; the best model registered and gated.

    ``kept`` is ``(trial number, model)`` of this invocation's best. Returns
    ``(best, registered, artifacts)``.
    """
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    tracking.log_final_metrics(parent_run_id, {
        "trials_complete": states.count("COMPLETE"), "trials_pruned": states.count("PRUNED"),
        "trials_failed": states.count("FAIL"), "epochs_trained": epochs}, prefix="tune/")
    artifacts = log_study_artifacts(study, parent_run_id, metric)
    best = best_trial(study)
    if best is None:
        tracking.set_run_tags(parent_run_id, {"nnpipe.promotion": "no trial completed; nothing registered"})
        return None, None, artifacts
    run_id = best.user_attrs[RUN_ATTR]
    info = {"number": best.number, "params": best.params, "value": best.value, "run_id": run_id}
    test = {k: v for k, v in tracking.client().get_run(run_id).data.metrics.items() if k.startswith("test/")}
    tracking.log_final_metrics(parent_run_id, {metric: best.value, **test}, prefix="best/")
    tracking.set_run_tags(parent_run_id, {"nnpipe.tune.best_trial": best.number, "nnpipe.tune.best_run": run_id,
                                          "nnpipe.tune.best_params": best.params})
    model = kept[1] if kept is not None and kept[0] == best.number else None
    registered = register_best(study, best, model, raw_example, model_name, gate_metric, greater_is_better, actor,
                               tags)
    tracking.set_run_tags(parent_run_id, {
        "nnpipe.promoted": None if registered is None else registered["promoted"],
        "nnpipe.promotion": registered["decision"] if registered is not None else
        "the best trial's model was not kept (its invocation stopped early); nothing registered"})
    return info, registered, artifacts
