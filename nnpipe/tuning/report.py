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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from nnpipe import tracking
from nnpipe.tuning.resume import METRIC_ATTR
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


@dataclass
class PageFacts:
    """What the champion's run page needs beyond the study: the data and the fixed settings."""

    ds: Any = None  # nnpipe.data.Dataset, None when tuning on ready-made Splits
    splits: Any = None
    hidden: list[int] = field(default_factory=list)
    activation: str = ""
    test_size: float | None = None
    val_size: float | None = None
    space: list[str] = field(default_factory=list)


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
                  tags: dict[str, Any], page: PageFacts | None = None) -> dict[str, Any]:
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
    version = tracking.register_model(uri, model_name, run_id, tracking.version_tags(
        tags, **{"nnpipe.tune.trial": f"{study.study_name} #{best.number}"}))
    study.set_user_attr(REGISTERED_ATTR.format(best.number), str(version))
    decision = tracking.promote_if_better(model_name, version, f"test/{metric}", greater_is_better, actor)
    champion = version if decision.promoted else decision.champion_version
    if page is not None:
        if model is None:  # kept by an interrupted invocation: the registered copy, digests checked
            from nnpipe.tracking.serving import load_verified

            model = load_verified(model_name, int(version)).model
        dress_champion_run(study, best, run_id, model, model_name, version, metric, greater_is_better, decision,
                           page)
    return {"version": str(version), "promoted": bool(decision.promoted), "decision": decision.reason, "new": True,
            "champion_version": None if champion is None else str(champion)}


def conclude(study: optuna.Study, parent_run_id: str, metric: str, epochs: int, kept: tuple[int, Any] | None,
             raw_example: Any, model_name: str, gate_metric: str, greater_is_better: bool, actor: str,
             tags: dict[str, Any], page: PageFacts | None = None,
             ) -> tuple[dict[str, Any] | None, dict[str, Any] | None, list[str]]:
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
        tracking.set_run_tags(parent_run_id, {"nnpipe.gate": "no trial completed; nothing registered"})
        return None, None, artifacts
    run_id = best.user_attrs[RUN_ATTR]
    info = {"number": best.number, "params": best.params, "value": best.value, "run_id": run_id}
    test = {k: v for k, v in tracking.client().get_run(run_id).data.metrics.items() if k.startswith("test/")}
    tracking.log_final_metrics(parent_run_id, {metric: best.value, **test}, prefix="best/")
    tracking.set_run_tags(parent_run_id, {"nnpipe.tune.best_trial": best.number, "nnpipe.tune.best_run": run_id,
                                          "nnpipe.tune.best_params": best.params})
    model = kept[1] if kept is not None and kept[0] == best.number else None
    registered = register_best(study, best, model, raw_example, model_name, gate_metric, greater_is_better, actor,
                               tags, page)
    describe_parent(study, parent_run_id, metric, best, run_id, registered, model_name, page)
    return info, registered, artifacts


def _link(kind: str, *args: Any) -> str:
    from nnpipe.tracking import links

    return getattr(links, f"{kind}_url")(tracking.tracking_uri(), *args)


def dress_champion_run(study: optuna.Study, best: optuna.trial.FrozenTrial, run_id: str, model: Any,
                       model_name: str, version: int, metric: str, greater_is_better: bool, decision: Any,
                       page: PageFacts) -> None:
    """Give the registered trial's run what a ``train`` run has: dataset, plots, the fixed settings, a description."""
    c = tracking.client()
    run = c.get_run(run_id)
    if page.ds is not None:
        tracking.log_dataset(run_id, page.ds, split_rows={
            "train": len(page.splits.y_train), "val": len(page.splits.y_val), "test": len(page.splits.y_test)})
    fixed = {"dataset": page.ds.name if page.ds is not None else None, "test_size": page.test_size,
             "val_size": page.val_size, "promotion_metric": f"test/{metric}", "greater_is_better": greater_is_better}
    tracking.log_params(run_id, {k: v for k, v in fixed.items() if v is not None and k not in run.data.params})
    history = {key: [m.value for m in sorted(c.get_metric_history(run_id, key), key=lambda m: m.step)]
               for key in run.data.metrics if key.startswith(("train/", "val/"))}
    y_pred = model.predict(page.splits.raw_test)
    tracking.log_training_artifacts(
        run_id, history, run.data.params, page.splits.y_test, y_pred, page.splits.classes,
        title=f"run {run.data.tags.get('mlflow.runName', run_id)}\n{model_name} v{version}",
        label_names=dict(enumerate(page.ds.class_names)) if page.ds is not None and page.ds.class_names else None)
    gate_tags, outcome, _ = tracking.run_outcome(model_name, version, decision.promoted, decision.reason,
                                                 _link("model", model_name))
    tracking.set_run_tags(run_id, gate_tags)
    data = f"`{page.ds.name}` ({len(page.ds.y)} rows, {page.ds.X.shape[1]} features)" if page.ds is not None else "the given splits"
    tracking.set_run_description(run_id, (
        f"Trial {best.number} of tuning study `{study.study_name}`: a network with hidden layers "
        f"{'-'.join(map(str, page.hidden))} ({page.activation}) on {data} with {dict(best.params)}; the best trial by "
        f"`{study.user_attrs.get(METRIC_ATTR, 'the study metric')}` ({best.value:.4g}).\n\n{outcome}"))


def describe_parent(study: optuna.Study, parent_run_id: str, metric: str, best: optuna.trial.FrozenTrial,
                    best_run: str, registered: dict[str, Any] | None, model_name: str,
                    page: PageFacts | None) -> None:
    """The study's parent run says what won, why, and links the registered version (dated, like every run)."""
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    experiment = tracking.client().get_run(parent_run_id).info.experiment_id
    head = (f"Tuning study `{study.study_name}`: {len(states)} trials ({states.count('COMPLETE')} complete, "
            f"{states.count('PRUNED')} pruned, {states.count('FAIL')} failed)"
            + (f" over `{'`, `'.join(page.space)}`" if page is not None and page.space else "") + ".")
    won = (f"**Best:** [trial {best.number}]({_link('run', experiment, best_run)}) with {metric} {best.value:.4g} "
           f"({'highest' if study.direction.name == 'MAXIMIZE' else 'lowest'} of the complete trials), "
           f"params `{dict(best.params)}`.")
    if registered is None:
        tail = "Nothing registered: the best trial's model was not kept (its invocation stopped early)."
        tags = {"nnpipe.gate": tail}
    elif not registered.get("new"):
        tail = registered["decision"] + "."
        tags = {}
    else:
        v = registered["version"]
        tags, tail, _ = tracking.run_outcome(model_name, v, registered["promoted"], registered["decision"],
                                             _link("model", model_name))
        tail = tail.replace(f"**{model_name} v{v}**", f"[{model_name} v{v}]({_link('version', model_name, v)})", 1)
        tags["nnpipe.tune.registered"] = f"{model_name} v{v}"
    if page is not None and page.ds is not None:
        tracking.log_dataset(parent_run_id, page.ds, split_rows={
            "train": len(page.splits.y_train), "val": len(page.splits.y_val), "test": len(page.splits.y_test)})
    tracking.set_run_tags(parent_run_id, tags)
    tracking.set_run_description(parent_run_id, f"{head}\n\n{won}\n\n{tail}")
