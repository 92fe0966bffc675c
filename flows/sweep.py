"""Hyperparameter sweep: N trainings on one cluster, each a nested MLflow run; the best is registered and gated.

Trials are Prefect tasks submitted together, so they run concurrently: a
``single``-mode trial trains as one Dask task on a worker of the shared
cluster; a distributed-mode trial drives that cluster's workers itself. The
data is loaded, validated and split once. The best trial (on the promotion
metric, measured on the held-out split) is the one that is registered.
"""

from __future__ import annotations

import itertools
import random
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from nnpipe.flows import tasks
from nnpipe.flows.config import TRAIN_FIELDS, PipelineConfig
from nnpipe.flows.pipeline import PipelineResult, artifact_key, default_model_name, dask_cluster, mlflow_run_link, mlflow_ui_command, summary_markdown
from nnpipe.data import Splits
from nnpipe.api import train as train_network

SEARCHABLE = TRAIN_FIELDS | {"hidden", "activation"}
MAX_CONCURRENT_TRIALS = 4


class SweepError(ValueError):
    """A bad search space; the message quotes the bad entry."""


def parse_grid(entries: list[str]) -> dict[str, list[Any]]:
    """``["lr=0.01,0.001", "hidden=32;64,32"]`` -> ``{"lr": [0.01, 0.001], "hidden": [[32], [64, 32]]}``."""
    space: dict[str, list[Any]] = {}
    for entry in entries:
        name, sep, values = entry.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not values.strip():
            raise SweepError(f"--grid expects NAME=V1,V2,..., got {entry!r}")
        if name not in SEARCHABLE:
            raise SweepError(f"--grid {entry!r}: {name!r} is not a searchable field; choose from {sorted(SEARCHABLE)}")
        if name == "hidden":  # layers separated by ',', alternatives by ';'
            space[name] = [[int(h) for h in alt.split(",") if h.strip()] for alt in values.split(";") if alt.strip()]
        else:
            space[name] = [yaml.safe_load(v.strip()) for v in values.split(",") if v.strip()]
    return space


def candidates(base: PipelineConfig, space: dict[str, list[Any]], trials: int | None, seed: int) -> list[dict[str, Any]]:
    """The grid's combinations (all, or ``trials`` sampled without replacement), each validated against ``base``."""
    if not space:
        raise SweepError("the search space is empty; give at least one --grid NAME=V1,V2")
    names = sorted(space)
    combos = [dict(zip(names, values)) for values in itertools.product(*(space[n] for n in names))]
    if trials is not None:
        if trials < 1:
            raise SweepError(f"trials must be >= 1, got {trials!r}")
        # Seeded so that a sweep is reproducible; it picks configurations, it does no training math.
        combos = random.Random(seed).sample(combos, min(trials, len(combos)))
    for combo in combos:
        trial_config(base, combo)  # fail before any training on a bad value
    return combos


def trial_config(base: PipelineConfig, combo: dict[str, Any]) -> PipelineConfig:
    """``base`` with one combination applied, validated."""
    values = base.model_dump()
    for key, value in combo.items():
        if key in TRAIN_FIELDS:
            values["train"][key] = value
        else:
            values[key] = value
    try:
        return PipelineConfig.model_validate(values)
    except Exception as exc:
        from nnpipe.flows.config import describe_validation_error

        detail = describe_validation_error(exc) if hasattr(exc, "errors") else str(exc)
        raise SweepError(f"trial {combo}: {detail}") from None


@task(name="trial", cache_policy=NO_CACHE, persist_result=False)
def run_trial(
    config: PipelineConfig, combo: dict[str, Any], splits: Splits, address: str, parent_run_id: str, index: int
) -> dict[str, Any]:
    """Train one configuration as a nested MLflow run; returns its run id, params, test metrics and model."""
    from nnpipe import tracking
    from nnpipe.distributed.cluster import connect

    logger = get_run_logger()
    label = f"trial {index}"
    # A task thread has no active MLflow run, so the parent is named by MLflow's own tag.
    with tracking.training_run(config.experiment, config.mlflow_params(),
                               tags={"mlflow.parentRunId": parent_run_id, "nnpipe.sweep.trial": index},
                               run_name=f"trial-{index}") as run:
        run_id = run.info.run_id
        if config.train.mode == "single":
            # One trial = one Dask task on a worker; the per-epoch history is logged when it returns.
            with connect(address=address) as client:
                future = client.submit(train_network, splits, config.train, hidden=tuple(config.hidden),
                                       activation=config.activation, pure=False)
                fit = future.result()
                model = fit.model
            log = tracking.metrics_callback(run_id)
            for step in range(fit.epochs_run):
                log(step, {k: v[step] for k, v in fit.history.items() if step < len(v)})
            logger.info("%s %s: trained %d epochs on the cluster", label, combo, fit.epochs_run)
        else:
            model, fit = tasks.train.fn(splits, config.train, config.hidden, config.activation, address, run_id, label)
        metrics = {k: float(v) for k, v in model.evaluate(splits.raw_test, splits.y_test).items()}
        tracking.log_final_metrics(run_id, metrics, prefix="test/")
        tracking.log_training_artifacts(run_id, fit.history, config.train.to_dict(), splits.y_test,
                                        model.predict(splits.raw_test), splits.classes)
        # Every trial keeps its model (so any can be registered later); only the best is registered now.
        model_uri = tracking.log_model(run_id, model, splits.raw_test[:5])
        logger.info("%s %s: %s", label, combo, {k: round(v, 4) for k, v in metrics.items()})
    return {"run_id": run_id, "params": combo, "metrics": metrics, "model_uri": model_uri, "config": config}


@flow(name="nnpipe-sweep", task_runner=ThreadPoolTaskRunner(max_workers=MAX_CONCURRENT_TRIALS),
      description="Grid or random search; the best trial is registered and gated.")
def sweep_flow(config: PipelineConfig = PipelineConfig(), space: dict[str, list[Any]] | None = None,
               trials: int | None = None) -> dict[str, Any]:
    """Run every candidate of ``space`` concurrently on one cluster; register and gate the best."""
    from nnpipe import tracking

    logger = get_run_logger()
    combos = candidates(config, space or {}, trials, config.train.seed)
    uri = tracking.configure(config.tracking_uri)
    name = Path(config.dataset).stem
    with ExitStack() as stack:
        parent = stack.enter_context(tracking.training_run(
            config.experiment, {**config.mlflow_params(), "sweep.space": space, "sweep.trials": len(combos)},
            tags={"nnpipe.flow": "nnpipe-sweep"}, run_name=f"sweep-{name}"))
        parent_id = parent.info.run_id
        ds = tasks.load(config.dataset, config.target, config.task)
        tasks.validate(ds, config.test_size, config.val_size)
        splits = tasks.split_scale(ds, config.test_size, config.val_size, config.train.seed)
        # Every trial shares one cluster, even single-mode ones (they run as Dask tasks on it).
        cluster_cfg = config if config.distributed else config.model_copy(
            update={"train": trial_config(config, {"mode": "sync"}).train})
        address = stack.enter_context(dask_cluster(cluster_cfg))
        lineage = tracking.run_tags(ds.name, ds.content_hash, address, config.train.workers)
        tracking.set_run_tags(parent_id, lineage)
        logger.info("sweep of %d trials on %s: %s", len(combos), address, combos)
        futures = [run_trial.submit(trial_config(config, c), c, splits, address, parent_id, i)
                   for i, c in enumerate(combos)]
        results = [f.result() for f in futures]
        metric, greater = config.metric_for(ds.task)
        missing = [r["run_id"] for r in results if metric not in r["metrics"]]
        if missing:
            raise ValueError(f"promotion metric {metric!r} is not among the test metrics {sorted(results[0]['metrics'])}")
        best = (max if greater else min)(results, key=lambda r: r["metrics"][metric])
        tracking.log_final_metrics(parent_id, best["metrics"], prefix="best/")
        tracking.set_run_tags(parent_id, {"nnpipe.sweep.best_run": best["run_id"], "nnpipe.sweep.best_params": best["params"]})
        model_name = config.model_name or default_model_name(ds.name)
        best_cfg: PipelineConfig = best["config"]
        model_uri = best["model_uri"]
        version = tasks.register(model_uri, model_name, best["run_id"], {**lineage, "nnpipe.sweep.parent": parent_id})
        decision = tasks.promote(model_name, version, f"test/{metric}", greater, actor=f"prefect:sweep-{name}")
        tracking.set_run_tags(parent_id, {"nnpipe.promoted": decision.promoted, "nnpipe.promotion": decision.reason})
    registered = PipelineResult(
        run_id=best["run_id"], experiment_id=parent.info.experiment_id, tracking_uri=uri, model_name=model_name,
        version=str(version), model_uri=model_uri, metrics=best["metrics"], promoted=bool(decision.promoted),
        decision=decision.reason,
        champion_version=str(version) if decision.promoted else (
            None if decision.champion_version is None else str(decision.champion_version)),
        dataset=ds.source, mode=best_cfg.train.mode, extra={"sweep_parent": parent_id},
    )
    create_markdown_artifact(
        summary_markdown(registered, mlflow_run_link(uri, registered.experiment_id, best["run_id"]), mlflow_ui_command(uri))
        + "\n## Trials\n\n| run | params | " + metric + " |\n|---|---|---|\n"
        + "\n".join(f"| `{r['run_id']}` | `{r['params']}` | {r['metrics'][metric]:.4f} |" for r in results),
        key=artifact_key("sweep", model_name),
        description=f"sweep of {len(results)} trials; best registered as v{version}",
    )
    return {
        "parent_run_id": parent_id,
        "trials": [{"run_id": r["run_id"], "params": r["params"], "metric": metric, "score": r["metrics"][metric]}
                   for r in results],
        "best": {"run_id": best["run_id"], "params": best["params"]},
        "registered": registered.to_dict(),
    }
