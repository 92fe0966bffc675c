"""Hyperparameter tuning as a Prefect flow: load -> validate -> split (tasks) -> an Optuna study on Dask.

The study itself is :func:`nnpipe.tuning.tune` (the same call a notebook
makes): trials in parallel on the cluster, pruned mid-training, each a nested
MLflow run under the study's parent run; the best trial's model is registered
and gated. ``nnpipe sweep`` is this flow with the grid sampler and no pruner.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from nnpipe.flows import tasks
from nnpipe.flows.config import PipelineConfig
from nnpipe.flows.orphans import end_orphans
from nnpipe.flows.pipeline import (
    artifact_key,
    dataset_label,
    mlflow_run_link,
    mlflow_ui_command,
)
from nnpipe.flows.progress import notify_trial


def check_space(config: PipelineConfig, space: list[str] | None, **settings: Any) -> None:
    """Validate the settings, the space, the dataset's kind and a resumed study against ``config`` (before any run)."""
    from nnpipe.tracking.store import tracking_uri
    from nnpipe.tuning import SpaceError, TuneSettings, parse_space
    from nnpipe.tuning.resume import resolve, stored_attrs
    from nnpipe.tuning.study import default_storage

    _check_in_memory(config)

    checked = TuneSettings(space=list(space or []), **{k: v for k, v in settings.items() if v is not None})
    if config.train.mode != "single":
        raise ValueError(f"config field 'train.mode': each trial trains in one process on a worker (trials run "
                         f"in parallel instead), so mode must be 'single', got {config.train.mode!r}")
    if checked.space:
        parse_space(checked.space, base=replace(config.train, mode="single"))
    elif checked.study is None:  # only a resumed study may omit the space (it reuses its own)
        raise SpaceError("the search space is empty; give at least one --space NAME=EXPR, "
                         "e.g. --space 'lr=loguniform(1e-4,1e-1)', or --study NAME to resume a study")
    if checked.study is not None:
        store = checked.storage or default_storage(config.tracking_uri or tracking_uri())
        found = stored_attrs(checked.study, store)
        chosen = resolve(checked.study, found[1] if found else None, space=checked.space, sampler=checked.sampler,
                         pruner=checked.pruner, metric=checked.metric)
        if not chosen["space"]:
            raise SpaceError(f"no study {checked.study!r} in {store} to resume, and no search space given; give "
                             "--space NAME=EXPR, e.g. --space 'lr=loguniform(1e-4,1e-1)'")


def _check_in_memory(config: PipelineConfig) -> None:
    """Refuse a source that only ``nnpipe train`` reads on the workers, saying what to do instead."""
    from nnpipe.data import DataError, check_source, is_parts

    try:
        check_source(config.dataset, config.target)
        if is_parts(config.dataset):  # train reads parts into memory (--in-memory); trials do not (yet)
            raise DataError(config.dataset)
    except DataError:
        if not config.large_source:
            raise  # a plain bad path or format: its own message says what is wrong
        # Each trial trains on rows this process holds (shipped to a worker); reading a data lake
        # per trial on the workers is not built. Say so instead of "not a file".
        raise DataError(
            f"{config.dataset}: tuning trains every trial on rows held in memory, from a built-in dataset or "
            f"one CSV or Parquet file; this is a large source (a directory, glob, URL or compressed file). "
            f"Tune on a sample file of it, then train on the whole source with "
            f"`nnpipe train --dataset {config.dataset}` and the best parameters"
        ) from None


def tune_run_name() -> str:
    """The Prefect flow run's name: ``tune-digits-tpe[-STUDY]``, or ``tune-digits-STUDY`` (its own sampler)."""
    from prefect.runtime import flow_run

    params = flow_run.parameters
    try:
        cfg = params.get("config")
        cfg = cfg if isinstance(cfg, PipelineConfig) else PipelineConfig.model_validate(cfg or {})
    except Exception:  # a bad config fails in the flow itself, with the real message
        return "nnpipe-tune"
    study = params.get("study")
    # A resumed study without --sampler samples with its own: the name leaves the sampler out then.
    sampler = params.get("sampler") or ("" if study else "tpe")
    return f"tune-{dataset_label(cfg)}" + (f"-{sampler}" if sampler else "") + (f"-{study}" if study else "")


@flow(name="nnpipe-tune", description="Optuna study on the Dask cluster; the best trial is registered and gated.",
      flow_run_name=tune_run_name)
def tune_flow(config: PipelineConfig = PipelineConfig(), space: list[str] | None = None, trials: int | None = None,
              timeout: float | None = None, sampler: str | None = None, pruner: str | None = None,
              parallel: int | None = None,
              study: str | None = None, storage: str | None = None, metric: str | None = None) -> dict[str, Any]:
    """Run (or resume) study ``study`` over ``space``; returns :class:`nnpipe.tuning.TuneResult` as a dict."""
    from nnpipe import tracking
    from nnpipe.tuning import tune

    logger = get_run_logger()
    settings = {"trials": trials, "timeout": timeout, "sampler": sampler, "pruner": pruner, "parallel": parallel,
                "study": study, "storage": storage, "metric": metric}
    check_space(config, space, **settings)
    uri = tracking.configure(config.tracking_uri)
    end_orphans()  # runs a driver killed outright left RUNNING: FAILED, and their flow runs Crashed
    ds = tasks.load(config.dataset, config.target, config.task, config.features)
    tasks.validate(ds, config.test_size, config.val_size)
    splits = tasks.split_scale(ds, config.test_size, config.val_size, config.train.seed)
    gate_metric, greater = config.metric_for(ds.task)

    def on_result(r: Any) -> None:
        logger.info("trial %d %s after %d epochs %s%s", r.number, r.state, r.epochs, r.params,
                    "" if r.value is None else f": {r.value:.4f}")
        notify_trial(r)

    result = tune(
        splits, space, **settings, train=config.train, hidden=config.hidden, activation=config.activation,
        dataset_name=ds.name, content_hash=ds.content_hash, experiment=config.experiment, model_name=config.model_name,
        promotion_metric=gate_metric, greater_is_better=greater, tracking_uri=uri,
        address=config.scheduler_address, workers=config.train.workers, on_result=on_result,
        actor=f"prefect:tune-{ds.name}",
    )
    reg = result.registered
    verdict = "no trial completed; nothing registered" if reg is None else (
        f"`{result.model_name}` version {reg['version']}: {reg['decision']}")
    link = mlflow_run_link(uri, result.experiment_id, result.parent_run_id)
    create_markdown_artifact(
        f"# nnpipe tune: study `{result.study}`\n\n- MLflow parent run: [`{result.parent_run_id}`]({link}) "
        f"(open the UI with `{mlflow_ui_command(uri)}`)\n- storage: `{result.storage}`\n- best: {result.best}\n"
        f"- registry: {verdict}\n\n## Trials\n\n"
        + result.summary,
        key=artifact_key("tune", result.study), description=f"study {result.study}: {verdict}"[:200],
    )
    return result.to_dict()
