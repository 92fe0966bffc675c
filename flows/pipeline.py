"""The training pipeline: load -> validate -> split/scale -> train -> evaluate -> register -> promote.

One MLflow run spans the whole pipeline and is opened first, so that a
failure at any step (bad data, an unreachable cluster, divergence) leaves a
FAILED run with the reason, no registered version, and the champion where it
was. Distributed modes train on one Dask cluster per flow run: the configured
scheduler address, or a local cluster started for the run and shared by every
training task in it.
"""

from __future__ import annotations

import re
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from nnpipe.flows import tasks
from nnpipe.flows.config import PipelineConfig


@dataclass
class PipelineResult:
    """What a pipeline run produced (also what ``nnpipe train`` prints)."""

    run_id: str
    experiment_id: str
    tracking_uri: str
    model_name: str
    version: str
    model_uri: str
    metrics: dict[str, float]
    promoted: bool
    decision: str
    champion_version: str | None
    dataset: str
    mode: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_model_name(dataset_name: str) -> str:
    """``nnpipe-<dataset>``, with anything MLflow or a URL would trip on replaced by ``-``."""
    return "nnpipe-" + re.sub(r"[^A-Za-z0-9_-]+", "-", dataset_name).strip("-").lower()


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes only) from free text."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]


def mlflow_run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """A browser link to the run: the server's own page, or the page `mlflow ui` will serve for a local store."""
    path = f"#/experiments/{experiment_id}/runs/{run_id}"
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/{path}"
    return f"http://127.0.0.1:5000/{path}"


def mlflow_ui_command(tracking_uri: str) -> str:
    """The command that opens the MLflow UI on this store."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri}"
    return f"mlflow ui --backend-store-uri {tracking_uri}"


@contextmanager
def dask_cluster(config: PipelineConfig) -> Iterator[str | None]:
    """The scheduler address training tasks use: the configured one, or a local cluster for this flow run."""
    if not config.distributed:
        yield None
        return
    from nnpipe.distributed.cluster import connect

    logger = get_run_logger()
    with connect(address=config.scheduler_address, workers=config.train.workers) as client:
        address = client.scheduler.address
        logger.info("Dask cluster %s (%d workers), dashboard %s", address,
                    len(client.scheduler_info().get("workers", {})), client.dashboard_link)
        yield address


def summary_markdown(result: PipelineResult, link: str, ui_command: str) -> str:
    """The flow run's markdown artefact: metrics, version, decision, link to the MLflow run."""
    rows = "\n".join(f"| `test/{k}` | {v:.4f} |" for k, v in sorted(result.metrics.items()))
    verdict = "promoted to **champion**" if result.promoted else "not promoted"
    return f"""# nnpipe training: `{result.model_name}` version {result.version}

- dataset: `{result.dataset}`, mode `{result.mode}`
- MLflow run: [`{result.run_id}`]({link}) (open the UI with `{ui_command}`)
- model: `{result.model_uri}`
- promotion: {verdict} — {result.decision}
- champion now: version {result.champion_version}

| metric | value |
|---|---|
{rows}
"""


@flow(name="nnpipe-train", description="Train, evaluate, register and gate one nnpipe model.")
def training_flow(config: PipelineConfig = PipelineConfig()) -> dict[str, Any]:
    """Run the whole training pipeline for ``config``; returns a :class:`PipelineResult` as a dict."""
    from nnpipe import tracking

    logger = get_run_logger()
    uri = tracking.configure(config.tracking_uri)
    train_cfg = config.train
    from nnpipe.sources import short_name

    run_name = f"{short_name(config.dataset) if config.large_source else Path(config.dataset).stem}-{train_cfg.mode}"
    with ExitStack() as stack:
        # The run first: everything after it that raises marks it FAILED with the reason.
        run = stack.enter_context(
            tracking.training_run(config.experiment, config.mlflow_params(), tags={"nnpipe.flow": "nnpipe-train"},
                                  run_name=run_name)
        )
        run_id = run.info.run_id
        logger.info("MLflow run %s in %s", run_id, uri)
        if config.large_source:  # the rows stay on the workers (or stream through one process)
            from nnpipe.flows import source_tasks

            source = source_tasks.describe(config)
            address = stack.enter_context(dask_cluster(config))
            prepared = source_tasks.validate_and_split(source, config, address)
            ds_name, ds_source, ds_task = source.name, source.location, prepared.task
            lineage = tracking.run_tags(source.name, source.fingerprint, address,
                                        train_cfg.workers if config.distributed else None,
                                        **source_tasks.lineage_extra(prepared))
            tracking.set_run_tags(run_id, lineage)
            model, fit = tasks.train(prepared, train_cfg, config.hidden, config.activation, address, run_id,
                                     resume_from=config.resume_from)
            tracking.set_run_tags(run_id, source_tasks.training_tags(fit))
            logger.info("trained on %s shards; %s", fit.info.get("data_path"), source_tasks.training_tags(fit))
            metrics, confusion = source_tasks.evaluate(model, prepared, train_cfg.mode, address)
            model_name = config.model_name or default_model_name(ds_name)
            model_uri, version = source_tasks.log_and_register(run_id, model, fit, train_cfg, prepared, metrics,
                                                               confusion, model_name, lineage)
        else:
            ds = tasks.load(config.dataset, config.target, config.task, config.features)
            tasks.validate(ds, config.test_size, config.val_size)
            if ds.warnings:  # kept on the run, where whoever reviews the model looks
                tracking.set_run_tags(run_id, {"nnpipe.data.warnings": "; ".join(ds.warnings)})
            splits = tasks.split_scale(ds, config.test_size, config.val_size, train_cfg.seed)
            address = stack.enter_context(dask_cluster(config))
            ds_name, ds_source, ds_task = ds.name, ds.source, ds.task
            lineage = tracking.run_tags(ds.name, ds.content_hash, address,
                                        train_cfg.workers if config.distributed else None)
            tracking.set_run_tags(run_id, lineage)
            model, fit = tasks.train(splits, train_cfg, config.hidden, config.activation, address, run_id,
                                     resume_from=config.resume_from)
            metrics = tasks.evaluate(model, splits)
            model_name = config.model_name or default_model_name(ds.name)
            model_uri, version = tasks.log_and_register(run_id, model, fit, train_cfg, splits, metrics, model_name,
                                                        lineage)
        metric, greater = config.metric_for(ds_task)
        decision = tasks.promote(model_name, version, f"test/{metric}", greater, actor=f"prefect:{run_name}")
        tracking.set_run_tags(run_id, {"nnpipe.promoted": decision.promoted, "nnpipe.promotion": decision.reason})
    result = PipelineResult(
        run_id=run_id, experiment_id=run.info.experiment_id, tracking_uri=uri, model_name=model_name,
        version=str(version), model_uri=model_uri, metrics=metrics, promoted=bool(decision.promoted),
        decision=decision.reason,
        # After the gate the champion is the new version if it won, else whoever held it.
        champion_version=str(version) if decision.promoted else (
            None if decision.champion_version is None else str(decision.champion_version)),
        dataset=ds_source, mode=train_cfg.mode,
    )
    link = mlflow_run_link(uri, result.experiment_id, run_id)
    create_markdown_artifact(
        summary_markdown(result, link, mlflow_ui_command(uri)),
        key=artifact_key("train", model_name),
        description=f"{model_name} v{version}: {'promoted' if result.promoted else 'not promoted'}",
    )
    logger.info("%s version %s: %s (MLflow run %s)", model_name, version, decision.reason, link)
    return result.to_dict()
