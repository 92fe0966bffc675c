"""The training pipeline: load -> validate -> split/scale -> train -> evaluate -> register -> promote.

One MLflow run spans the whole pipeline and is opened first, so that a
failure at any step (bad data, an unreachable cluster, divergence) leaves a
FAILED run with the reason, no registered version, and the champion where it
was. Distributed modes train on one Dask cluster per flow run: the configured
scheduler address, or a local cluster started for the run and shared by every
training task in it.
"""

from __future__ import annotations

import datetime as _dt
import re
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from nnpipe.flows import tasks
from nnpipe.flows.config import PipelineConfig
from nnpipe.flows.orphans import current_flow_run_tags, end_orphans
from nnpipe.flows.progress import announce, report_outcome
from nnpipe.names import default_model_name


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


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes only) from free text."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]


def mlflow_run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """A browser link to the run: the server's own page, or the page :func:`mlflow_ui_command` serves."""
    from nnpipe.tracking import links

    return links.run_url(tracking_uri, experiment_id, run_id)


def mlflow_ui_command(tracking_uri: str) -> str:
    """The command that serves the MLflow UI on this store (for a server: its URL, already serving)."""
    from nnpipe.tracking import links

    return links.ui_command(tracking_uri) or f"open {links.ui_base(tracking_uri)}"


def stem(dataset: str) -> str:
    """``iris`` for ``iris``, ``data`` for ``/path/data.csv``."""
    return Path(dataset).stem or dataset


def dataset_label(config: PipelineConfig) -> str:
    """The dataset as run names show it: the file stem, or a large source's short name."""
    if config.large_source:
        from nnpipe.sources.location import short_name

        return short_name(config.dataset)
    return stem(config.dataset)


def mlflow_run_name(config: PipelineConfig) -> str:
    """Unique and descriptive: ``iris-single-64x32-20261129-060712`` (dataset, mode, network, start time UTC)."""
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{dataset_label(config)}-{config.train.mode}-{'x'.join(map(str, config.hidden))}-{now}"


def flow_run_name() -> str:
    """The Prefect flow run's name at start: dataset, mode and network (the version is added when known)."""
    from prefect.runtime import flow_run

    cfg = flow_run.parameters.get("config")
    try:
        cfg = cfg if isinstance(cfg, PipelineConfig) else PipelineConfig.model_validate(cfg or {})
    except Exception:  # a bad config fails in the flow itself, with the real message
        return "nnpipe-train"
    return f"{dataset_label(cfg)}-{cfg.train.mode}-{'x'.join(map(str, cfg.hidden))}"


def _rename_flow_run(name: str) -> None:
    """Rename the current flow run (best effort: a view, never a failure)."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, name=name)
    except Exception as exc:
        get_run_logger().warning("could not rename flow run %s: %s", flow_run.id, exc)


def flow_run_url() -> str | None:
    """The Prefect UI page of this flow run when a Prefect server is in use (None for a temporary API)."""
    import os

    from prefect.runtime import flow_run

    if not os.environ.get("PREFECT_API_URL"):
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            return None
    return flow_run.ui_url


def run_start_tags(config: PipelineConfig) -> dict[str, str]:
    """Tags a pipeline run starts with: the flow, its settings (what ``--resume-from`` restores), the run it resumes."""
    import json

    from nnpipe.flows.config import CONFIG_TAG, RESUMED_FROM_TAG

    tags = {"nnpipe.flow": "nnpipe-train", CONFIG_TAG: json.dumps(config.resume_values(), sort_keys=True)}
    if config.resume_from:  # the new run links to the one it continues
        tags[RESUMED_FROM_TAG] = config.resume_from
    return tags


def run_description(config: PipelineConfig, ds: Any = None, outcome: str = "") -> str:
    """The MLflow run's description (markdown): what trains on what, and (at the end) what became of it."""
    t = config.train
    where = "one process" if t.mode == "single" else f"{t.workers} Dask workers ({t.mode})"
    data = f"`{config.dataset}`"
    if ds is not None:
        data += f" ({len(ds.y)} rows, {ds.X.shape[1]} features, {ds.task})"
    text = (f"Trains a {'-'.join(map(str, config.hidden))} {config.activation} network on {data} "
            f"with {t.optimizer} (lr {t.learning_rate:g}, batch {t.batch_size}, up to {t.epochs} epochs) on {where}; "
            f"started by the nnpipe-train flow."
            + (f" Resumes run `{config.resume_from}` from its newest checkpoint." if config.resume_from else ""))
    return text + (f"\n\n{outcome}" if outcome else "")


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
        logger.info("Dask cluster %s (%d workers)", address, len(client.scheduler_info().get("workers", {})))
        announce(f"Dask:        {client.dashboard_link}"
                 + ("" if config.scheduler_address else "  (lives as long as this training)"))
        yield address
    if not config.scheduler_address:  # the link printed above stops answering now: say so
        announce("Dask:        training ended; its cluster and dashboard are closed (the MLflow run keeps every epoch)")


def summary_markdown(result: PipelineResult, links: dict[str, str], ui_command: str | None,
                     val_metrics: dict[str, float] | None = None, champion_metrics: dict[str, float] | None = None) -> str:
    """The flow run's markdown artefact: the decision, test and validation metrics beside the champion's, links.

    ``links``: ``run``, ``version`` and ``model`` (registry) page URLs.
    """
    verdict = "promoted to **champion**" if result.promoted else "not promoted"
    champion = champion_metrics or {}
    was = result.extra.get("champion_before")
    head = "champion before" + (f" (v{was})" if was else "")
    rows = [f"| metric | v{result.version} (this run) | {head} |", "|---|---|---|"]
    for key, value in sorted(result.metrics.items()):
        other = champion.get(f"test/{key}")
        rows.append(f"| test/{key} | {value:.4f} | {'–' if other is None else f'{other:.4f}'} |")
    for key, value in sorted((val_metrics or {}).items()):
        other = champion.get(key)
        rows.append(f"| {key} | {value:.4f} | {'–' if other is None else f'{other:.4f}'} |")
    serve = f"\n\nThe store is local: start its UI with `{ui_command}` to open these links." if ui_command else ""
    return f"""# {result.model_name} v{result.version}: {verdict}

{result.decision}

- dataset **{result.dataset}**, mode **{result.mode}**
- MLflow run: [{result.extra.get("run_name", result.run_id)}]({links["run"]})
- model version: [{result.model_name} v{result.version}]({links["version"]}) · registry: [{result.model_name}]({links["model"]})
- champion after this gate ({_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC): {"none" if result.champion_version is None else f"v{result.champion_version}"}; where the champion alias is now: [the registry page]({links["model"]})

{chr(10).join(rows)}{serve}
"""


@dataclass(frozen=True)
class RunRecord:
    """The MLflow run a pipeline run writes to, and where its pages are."""

    run_id: str
    experiment_id: str
    name: str
    tracking_uri: str
    prefect_url: str | None
    metrics_port: int | None


@dataclass(frozen=True)
class Trained:
    """What either data path returns: the registered model and the data it learned from."""

    model_name: str
    version: str
    model_uri: str
    metrics: dict[str, float]
    dataset: str  # as given: a file path, a built-in name, a source location
    task: str
    baseline: tuple[int, dict[str, float]] | None = None  # warm start: the champion's metrics on this test split


@contextmanager
def mlflow_run(config: PipelineConfig) -> Iterator[RunRecord]:
    """The pipeline's MLflow run, opened first: anything raised inside ends it FAILED with the reason."""
    from nnpipe import tracking
    from nnpipe.tracking import links
    from nnpipe.tracking.prometheus import port_from_env

    uri = tracking.configure(config.tracking_uri)
    end_orphans()  # runs a driver killed outright left RUNNING: FAILED, and their flow runs Crashed
    name = mlflow_run_name(config)
    prefect_url = flow_run_url()
    if prefect_url:
        announce(f"Prefect:     {prefect_url}")
    with tracking.training_run(config.experiment, config.mlflow_params(),
                               tags={**run_start_tags(config), **current_flow_run_tags()}, run_name=name,
                               description=run_description(config), system_metrics=True) as run:
        get_run_logger().info("MLflow run %s in %s", run.info.run_id, uri)
        announce(f"MLflow:      run {name}  {links.run_url(uri, run.info.experiment_id, run.info.run_id)}")
        yield RunRecord(run.info.run_id, run.info.experiment_id, name, uri, prefect_url,
                        config.metrics_port if config.metrics_port is not None else port_from_env())


def train_in_memory(config: PipelineConfig, run: RunRecord, stack: ExitStack) -> Trained:
    """Load, validate, split and scale in this process, then train, evaluate and register."""
    ds = tasks.load(config.dataset, config.target, config.task, config.features)
    tasks.validate(ds, config.test_size, config.val_size)
    splits = tasks.split_scale(ds, config.test_size, config.val_size, config.train.seed)
    tasks.describe_run(run.run_id, config, ds, splits, run_description(config, ds))
    address = stack.enter_context(dask_cluster(config))  # after the data checks: bad data starts no cluster
    lineage = tasks.tag_lineage(run.run_id, ds.name, ds.content_hash, address, config.train.workers
                                if config.distributed else None)
    model_name = config.model_name or default_model_name(ds.name)
    model, fit = tasks.train(splits, config.train, config.hidden, config.activation, address, run.run_id,
                             resume_from=config.resume_from, metrics_port=run.metrics_port, run_name=run.name,
                             dataset=ds.name, warm_from=model_name if config.warm_start else None)
    metrics = tasks.evaluate(model, splits)
    baseline = tasks.evaluate_champion(run.run_id, model_name, lambda champion: champion.evaluate(
        splits.raw_test, splits.y_test)) if config.warm_start else None
    model_uri, version = tasks.log_and_register(run.run_id, model, fit, config.train, splits, metrics, model_name,
                                                lineage, run_name=run.name, label_names=tasks.class_label_names(ds))
    return Trained(model_name, version, model_uri, metrics, ds.source, ds.task, baseline)


def train_on_source(config: PipelineConfig, run: RunRecord, stack: ExitStack) -> Trained:
    """A large source: validate, split, train and evaluate where the rows are read (on the workers)."""
    from nnpipe.flows import source_tasks

    source = source_tasks.describe(config)
    address = stack.enter_context(dask_cluster(config))
    prepared = source_tasks.validate_and_split(source, config, address)
    source_tasks.describe_run(run.run_id, config, prepared)
    lineage = tasks.tag_lineage(run.run_id, source.name, source.fingerprint, address,
                                config.train.workers if config.distributed else None,
                                **source_tasks.lineage_extra(prepared))
    model_name = config.model_name or default_model_name(source.name)
    model, fit = tasks.train(prepared, config.train, config.hidden, config.activation, address, run.run_id,
                             resume_from=config.resume_from, metrics_port=run.metrics_port, run_name=run.name,
                             dataset=source.name, warm_from=model_name if config.warm_start else None)
    metrics, confusion = source_tasks.evaluate(model, prepared, config.train.mode, address)
    baseline = tasks.evaluate_champion(run.run_id, model_name, lambda champion: source_tasks.evaluate.fn(
        champion, prepared, config.train.mode, address)[0]) if config.warm_start else None
    model_uri, version = source_tasks.log_and_register(run.run_id, model, fit, config.train, prepared, metrics,
                                                       confusion, model_name, lineage)
    return Trained(model_name, version, model_uri, metrics, source.location, prepared.task, baseline)


@flow(name="nnpipe-train", description="Train, evaluate, register and gate one nnpipe model.",
      flow_run_name=flow_run_name)
def training_flow(config: PipelineConfig = PipelineConfig()) -> dict[str, Any]:
    """Run the whole training pipeline for ``config``; returns a :class:`PipelineResult` as a dict."""
    with ExitStack() as stack:
        run = stack.enter_context(mlflow_run(config))
        train_path = train_on_source if config.large_source else train_in_memory
        trained = train_path(config, run, stack)
        metric, greater = config.metric_for(trained.task)
        decision = tasks.promote(trained.model_name, trained.version, f"test/{metric}", greater,
                                 actor=f"prefect:{run.name}", baseline=trained.baseline)
        tasks.record_outcome(run.run_id, trained.model_name, trained.version, decision, run_description(config))
    result = pipeline_result(config, run, trained, decision)
    report_outcome(result.to_dict())  # recorded in MLflow: the CLI keeps it even if Prefect's API goes next
    publish(result, decision)
    return result.to_dict()


def pipeline_result(config: PipelineConfig, run: RunRecord, trained: Trained, decision: Any) -> PipelineResult:
    """The flow's return value (what ``nnpipe train`` prints), with the pages to look at."""
    from nnpipe.tracking import links

    uri, name, version = run.tracking_uri, trained.model_name, trained.version
    return PipelineResult(
        run_id=run.run_id, experiment_id=run.experiment_id, tracking_uri=uri, model_name=name, version=version,
        model_uri=trained.model_uri, metrics=trained.metrics, promoted=bool(decision.promoted),
        decision=decision.reason,
        # After the gate the champion is the new version if it won, else whoever held it.
        champion_version=version if decision.promoted else (
            None if decision.champion_version is None else str(decision.champion_version)),
        dataset=trained.dataset, mode=config.train.mode,
        extra={"run_name": run.name, "champion_before": decision.champion_version,
               "run_url": links.run_url(uri, run.experiment_id, run.run_id),
               "version_url": links.version_url(uri, name, version),
               "model_url": links.model_url(uri, name), "prefect_url": run.prefect_url,
               "outside_moves": list(decision.outside_moves)},
    )


def publish(result: PipelineResult, decision: Any) -> None:
    """The flow run's artefact (the decision beside the champion's metrics), its final name and log line."""
    from nnpipe.tracking import links

    page = {"run": result.extra["run_url"], "version": result.extra["version_url"], "model": result.extra["model_url"]}
    create_markdown_artifact(
        summary_markdown(result, page, links.ui_command(result.tracking_uri), _final_val(result.run_id),
                         _champion_metrics(result.model_name, decision.champion_version)),
        key=artifact_key("train", result.model_name),
        description=f"{result.model_name} v{result.version}: {'promoted' if result.promoted else 'not promoted'}",
    )
    _rename_flow_run(f"{flow_run_name()} → {result.model_name} v{result.version}")
    get_run_logger().info("%s version %s: %s (MLflow run %s)", result.model_name, result.version, result.decision,
                          page["run"])


def _final_val(run_id: str) -> dict[str, float]:
    from nnpipe import tracking

    metrics = tracking.client().get_run(run_id).data.metrics
    return {k: v for k, v in metrics.items() if k.startswith("val/")}


def _champion_metrics(name: str, version: int | None) -> dict[str, float]:
    """The run metrics of the champion the candidate was compared with (empty when there was none)."""
    from nnpipe import tracking

    if version is None:
        return {}
    try:
        mv = tracking.get_version(name, version)
        return dict(tracking.client().get_run(mv.run_id).data.metrics) if mv.run_id else {}
    except Exception:  # deleted run or version: the artefact shows dashes
        return {}
