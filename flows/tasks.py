"""Small typed Prefect tasks: each a thin wrapper over one nnpipe call.

The flows compose these; the math stays in ``nnpipe``. Only loading retries
(it is the one step that touches a file system that may hiccup), and only on
I/O errors: a :class:`~nnpipe.data.DataError` is a fact about the data that a
retry cannot change.
"""

from __future__ import annotations

import dataclasses
import tempfile
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from typing import Any, Callable, Iterator

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE, CachePolicy
from prefect.tasks import exponential_backoff

import nnpipe
from nnpipe.api import train as train_network
from nnpipe.config import TrainConfig
from nnpipe.data.load import Dataset, Splits, load_dataset, split_and_scale
from nnpipe.flows.progress import announce, format_logs, notify
from nnpipe.model import Model
from nnpipe.results import Callback, FitResult
from nnpipe.sources.prep import PreparedSource

WARM_VERSION_TAG = "nnpipe.warm_start.version"  # the champion version a warm-started run began from
CHAMPION_PREFIX = "champion/test/"  # that version's metrics on the run's own test split
SAME_SPLIT_TAG = "nnpipe.gate.champion_same_split"  # on the version: the champion's score the gate compared

# ---------------------------------------------------------------- tasks


def _retry_on_io(task, task_run, state) -> bool:
    """Retry only when loading failed on I/O (a flaky mount), never on bad data."""
    try:
        state.result()
    except OSError:
        return True
    except Exception:
        return False
    return False


@task(
    name="load",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=1),
    retry_jitter_factor=0.5,
    retry_condition_fn=_retry_on_io,
    cache_policy=NO_CACHE,
)
def load(source: str, target: str | None = None, task: str | None = None,
         features: list[str] | None = None) -> Dataset:
    """Load and validate a built-in dataset or a CSV/Parquet file."""
    from nnpipe.data import is_parts

    if is_parts(source):  # a folder or glob read into memory (--in-memory)
        from nnpipe.sources import load_parts

        ds = load_parts(source, str(target), features, task=task)
    else:
        ds = load_dataset(source, target=target, task=task, features=features)
    for note in ds.notes:  # a folder read into memory: say how much
        announce(f"Data:        {note}")
    get_run_logger().info(
        "loaded %s: %d rows, %d features, task %s, sha256 %s", ds.source, len(ds.y), ds.X.shape[1], ds.task, ds.content_hash[:12]
    )
    return ds


@task(name="validate", cache_policy=NO_CACHE)
def validate(ds: Dataset, test_size: float, val_size: float) -> dict[str, Any]:
    """Summarise the validated dataset and check every split part can get a row of each class."""
    classes = ds.classes
    summary = {
        "rows": int(len(ds.y)),
        "features": int(ds.X.shape[1]),
        "task": ds.task,
        "classes": None if classes is None else len(classes),
        "content_hash": ds.content_hash,
    }
    # Loading already rejected non-finite values and unknown targets; what is left
    # to check before splitting is the class counts, which split_and_scale does.
    logger = get_run_logger()
    logger.info("validated %s: %s", ds.source, summary)
    for warning in ds.warnings:  # e.g. constant columns: kept, but worth a look
        logger.warning("%s: %s", ds.source, warning)
    return summary


def _split_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """The input's content hash, the split configuration and the code version: nothing else matters."""
    ds: Dataset = parameters["ds"]
    return "split-{}-{}-{}-{}-{}-{}-{}".format(
        ds.content_hash, ds.target, ds.task, parameters["test_size"], parameters["val_size"], parameters["seed"],
        nnpipe.__version__,
    )


@task(
    name="split-and-scale",
    cache_policy=CachePolicy.from_cache_key_fn(_split_cache_key),
    cache_expiration=timedelta(days=7),
    persist_result=True,
)
def split_scale(ds: Dataset, test_size: float, val_size: float, seed: int) -> Splits:
    """Seeded train/val/test split with a scaler fitted on the training part (cached)."""
    splits = split_and_scale(ds, test_size=test_size, val_size=val_size, seed=seed)
    get_run_logger().info(
        "split %s: train %d, val %d, test %d rows", ds.source, len(splits.y_train), len(splits.y_val), len(splits.y_test)
    )
    return splits


@task(name="train", cache_policy=NO_CACHE, persist_result=False)
def train(
    splits: Splits | PreparedSource,
    config: TrainConfig,
    hidden: list[int],
    activation: str,
    address: str | None = None,
    run_id: str | None = None,
    label: str = "",
    resume_from: str | None = None,
    metrics_port: int | None = None,
    run_name: str = "",
    dataset: str = "",
    warm_from: str | None = None,
) -> tuple[Model, FitResult]:
    """Train on the configured Dask cluster (or in-process for ``single``), logging every epoch.

    ``splits`` is the in-memory split, or a large source prepared where its
    rows are read (:class:`~nnpipe.sources.PreparedSource`): ``nnpipe.train``
    takes either.

    Every epoch or round also shows on the Dask dashboard (distributed modes)
    and, with ``metrics_port`` (0: a free port), on a Prometheus ``/metrics``
    endpoint served for the duration of the training.
    """
    from nnpipe import tracking

    logger = get_run_logger()
    prefix = f"[{label}] " if label else ""

    def log_progress(step: int, logs: dict[str, float]) -> None:  # every mode: once per epoch's worth of rows
        logger.info("%sepoch %d: %s", prefix, step + 1, format_logs(logs))

    callbacks: list[Callback] = [log_progress, notify]
    if run_id:
        callbacks.insert(0, tracking.metrics_callback(run_id))
    with ExitStack() as views:
        if address and config.mode != "single":
            from nnpipe.distributed.progress import DashboardProgress

            # first: it adds the live/lost worker counts the others report
            callbacks.insert(0, views.enter_context(DashboardProgress(address, run_name or label)))
        if metrics_port is not None:
            from nnpipe.tracking.prometheus import TrainingExporter

            exporter = views.enter_context(TrainingExporter(
                metrics_port, info={"run": run_name or label, "mode": config.mode, "dataset": dataset}))
            callbacks.append(exporter.callback)
            announce(f"Prometheus:  {exporter.url}  (served while this training runs)")
        theta = warm_start_theta(warm_from, splits, config, hidden, activation, run_id) if warm_from else None
        trained = _train(splits, config, hidden, activation, address, run_id, resume_from, callbacks, prefix, theta)
    if metrics_port is not None:  # the /metrics link printed above stops answering now
        announce("Prometheus:  training ended; /metrics is closed (the MLflow run keeps every epoch)")
    return trained


def _train(splits: Splits | PreparedSource, config: TrainConfig, hidden: list[int], activation: str, address: str | None,
           run_id: str | None, resume_from: str | None, callbacks: list[Callback], prefix: str,
           theta: Any = None) -> tuple[Model, FitResult]:
    from nnpipe import tracking

    logger = get_run_logger()
    logger.info("%straining mode=%s workers=%s on %s", prefix, config.mode,
                1 if config.mode == "single" else config.workers, address or "this process")
    with _checkpoint_dir(config) as ckpt_dir:
        config = dataclasses.replace(config, checkpoint_dir=ckpt_dir)
        if resume_from:
            n = tracking.fetch_checkpoints(resume_from, ckpt_dir)
            logger.info("%sresuming from %d checkpoint file(s) of MLflow run %s", prefix, n, resume_from)
        try:
            result = train_network(
                splits, config, hidden=tuple(hidden), activation=activation, callbacks=callbacks, theta=theta,
                address=address if config.mode != "single" else None,
                metadata={"mlflow_run_id": run_id} if run_id else None,
            )
            model = result.model
        except Exception as exc:
            named = name_the_run(exc, run_id)
            if named is None:
                raise
            raise named from exc
        finally:  # a failed run's checkpoints are what a resumed run needs most
            if run_id and config.checkpoint_every:
                tracking.log_checkpoints(run_id, ckpt_dir)
    logger.info("%strained %d epochs%s", prefix, result.epochs_run, " (stopped early)" if result.stopped_early else "")
    loop = result.info.get("loop")
    if loop:  # single mode: the fused or the general step loop (nnpipe.core.training.choose_loop)
        logger.info("%ssingle-process loop: %s", prefix, loop)
        if run_id:
            tracking.set_run_tags(run_id, {"nnpipe.single_loop": loop})
    report_target(result.info.get("target"), run_id, prefix)
    if result.info.get("wire_measured"):  # what a slower network than this one would cost
        info = result.info
        announce(f"{prefix}Wire:        {_mb(info['wire_bytes_sent_per_epoch'])} sent, "
                 f"{_mb(info['wire_bytes_received_per_epoch'])} received per epoch by the driver "
                 f"({info['wire_s_per_epoch_1gbit']:.3g} s an epoch on a 1 Gbit/s link)")
    note = result.info.get("early_stopping")
    if note:  # the console line ended at "epoch 16/30": say why, and which epoch the model is
        announce(f"{prefix}{note[0].upper()}{note[1:]}")
        if run_id:
            tracking.set_run_tags(run_id, {"nnpipe.early_stopping": note})
    return model, result


def _mb(n: float) -> str:
    return f"{n / 1e6:.3g} MB" if n >= 1e5 else f"{n / 1e3:.3g} kB"


def report_target(record: dict | None, run_id: str | None, prefix: str = "") -> None:
    """The ``--until`` target's outcome: a console line, tags, and ``target/seconds`` / ``target/epochs`` when reached.

    The metrics sit at the step of the epoch that reached the target, so the
    MLflow charts line them up with the curves; a run that never reached it
    has the tag ``nnpipe.target_reached=false`` and no ``target/*`` metrics.
    """
    from nnpipe import tracking
    from nnpipe.target import describe

    if not record:
        return
    line = describe(record)
    announce(f"{prefix}{line[0].upper()}{line[1:]}")
    if run_id:
        tracking.set_run_tags(run_id, {"nnpipe.target": record["target"],
                                       "nnpipe.target_reached": str(record["reached"]).lower()})
        if record["reached"]:
            tracking.log_final_metrics(run_id, {"seconds": record["seconds"], "epochs": float(record["epochs"])},
                                       prefix="target/", step=record["epochs"] - 1)


def warm_start_theta(name: str, data: Splits | PreparedSource, config: TrainConfig, hidden: list[int],
                     activation: str, run_id: str | None) -> Any:
    """The champion of ``name``'s parameters when its network has this run's shape, else None.

    Either way the run's tag ``nnpipe.warm_start`` says what it started from
    (``champion v3``, or why it started from the seed), so a nightly
    retraining's lineage names the version it continued.
    """
    import numpy as np

    from nnpipe import tracking
    from nnpipe.api import source_spec, splits_spec

    spec = (source_spec if isinstance(data, PreparedSource) else splits_spec)(data, hidden, activation, config.dtype)
    found = tracking.champion_model(name)
    theta = None
    if found is None:
        note = f"seed: {name} has no champion yet"
    else:
        version, champion = found
        same_labels = (champion.classes is None) == (data.classes is None) and (
            data.classes is None or np.array_equal(np.asarray(champion.classes), np.asarray(data.classes)))
        if champion.spec == spec and same_labels:
            theta, note = np.array(champion.theta, dtype=spec.dtype), f"champion v{version}"
            if run_id:  # read back by evaluate_champion: the gate scores this version on this run's split
                tracking.set_run_tags(run_id, {WARM_VERSION_TAG: str(version)})
        else:
            note = (f"seed: champion v{version}'s network ({champion.spec.n_inputs} inputs, hidden "
                    f"{list(champion.spec.hidden)}, {champion.spec.n_outputs} outputs) differs from this run's "
                    f"({spec.n_inputs}, {list(spec.hidden)}, {spec.n_outputs})" + ("" if same_labels else
                                                                                  " or its classes differ"))
    if run_id:
        tracking.set_run_tags(run_id, {"nnpipe.warm_start": note})
    get_run_logger().info("warm start: %s", note)
    return theta


def name_the_run(exc: BaseException, run_id: str | None) -> BaseException | None:
    """``exc`` again with this run's id in its resume hint (``--resume-from RUN_ID``), or None.

    The training loops that lose their scheduler or last worker do not know
    the MLflow run; the message the user reads should be the command to type.
    """
    text = str(exc)
    if not run_id or RESUME_PLACEHOLDER not in text or len(exc.args) != 1:
        return None
    try:
        return type(exc)(text.replace(RESUME_PLACEHOLDER, f"--resume-from {run_id}"))
    except Exception:  # an exception type that cannot be rebuilt from its message keeps it as it was
        return None


RESUME_PLACEHOLDER = "--resume-from RUN_ID"


@contextmanager
def _checkpoint_dir(config: TrainConfig) -> Iterator[str]:
    """The configured checkpoint directory, or a scratch one removed once its files are logged."""
    if config.checkpoint_dir:
        yield config.checkpoint_dir
        return
    with tempfile.TemporaryDirectory(prefix="nnpipe-ckpt-") as tmp:
        yield tmp


@task(name="describe-run", cache_policy=NO_CACHE)
def describe_run(run_id: str, config: Any, ds: Dataset, splits: Splits, description: str) -> None:
    """Put on the MLflow run what it trains on: the dataset input, the gate's metric, a description, data warnings."""
    from nnpipe import tracking

    tracking.log_params(run_id, config.promotion_params(ds.task))
    tracking.log_dataset(run_id, ds, split_rows={"train": len(splits.y_train), "val": len(splits.y_val),
                                                 "test": len(splits.y_test)})
    tracking.set_run_description(run_id, description)
    if ds.warnings:  # kept on the run, where whoever reviews the model looks
        tracking.set_run_tags(run_id, {"nnpipe.data.warnings": "; ".join(ds.warnings)})


@task(name="tag-lineage", cache_policy=NO_CACHE)
def tag_lineage(run_id: str, dataset: str, digest: str, address: str | None, workers: int | None,
                **extra: Any) -> dict[str, str]:
    """Tag the run with its lineage (data digest, code version, cluster); returns the tags for the version too."""
    from nnpipe import tracking

    lineage = tracking.run_tags(dataset, digest, address, workers, **extra)
    tracking.set_run_tags(run_id, lineage)
    return lineage


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(model: Model, splits: Splits) -> dict[str, float]:
    """Held-out metrics of the servable model on the raw (unscaled) test features."""
    metrics = model.evaluate(splits.raw_test, splits.y_test)
    get_run_logger().info("test: %s", {k: round(float(v), 4) for k, v in metrics.items()})
    return {k: float(v) for k, v in metrics.items()}


@task(name="log-and-register", cache_policy=NO_CACHE)
def log_and_register(
    run_id: str,
    model: Model,
    result: FitResult,
    config: TrainConfig,
    splits: Splits,
    metrics: dict[str, float],
    model_name: str,
    tags: dict[str, str],
    run_name: str = "",
    label_names: dict[Any, str] | None = None,
) -> tuple[str, str]:
    """Log final metrics and the pyfunc model to the run, register it, then its plots; returns (model_uri, version).

    The test metrics are logged one step after the last epoch, the step the
    logged model takes its metrics from, so its page shows these and not the
    first epoch's. With early stopping, the restored model's validation
    metrics are ``val/best_*`` at its epoch's step (no point is added to the
    ``val/*`` curves).
    """
    from nnpipe import tracking

    logger = get_run_logger()
    final_step = max([result.epochs_run, *(len(v) for v in result.history.values())])
    tracking.log_final_metrics(run_id, metrics, prefix="test/", step=final_step)
    if len(splits.y_val) and config.patience is not None and config.restore_best and result.best_epoch is not None:
        # The restored model's validation metrics at its own epoch's step: the curves gain no
        # point after the last epoch (which read as a last-epoch improvement), and the
        # early-stopping tag says which epoch the model is.
        raw_val = splits.X_val * splits.scale + splits.mean  # the model scales raw features itself
        val = model.evaluate(raw_val, splits.y_val)
        tracking.log_final_metrics(run_id, {f"best_{k}": float(v) for k, v in val.items()}, prefix="val/",
                                   step=result.best_epoch)
    # the run's name (dataset, mode, network, time): unique, unlike MLflow's default "model"
    model_uri = tracking.log_model(run_id, model, splits.raw_test[:5], name=(run_name or model_name)[:200],
                                   step=final_step)
    version = tracking.register_model(model_uri, model_name, run_id, tracking.version_tags(tags))
    logger.info("registered %s version %s from %s", model_name, version, model_uri)
    try:  # plots name the version, so they come after registering; a failed plot is no failed run
        y_pred = model.predict(splits.raw_test)
        tracking.log_training_artifacts(run_id, result.history, config.to_dict(), splits.y_test, y_pred,
                                        splits.classes, title=f"run {run_name}\n{model_name} v{version}",
                                        label_names=label_names)
    except Exception as exc:
        logger.warning("could not log the plots of run %s: %s: %s", run_id, type(exc).__name__, exc)
    return model_uri, str(version)


def class_label_names(ds: Dataset) -> dict[Any, str] | None:
    """Readable class names of a built-in dataset (iris: 0 -> setosa, ...); None for files."""
    if not ds.class_names:
        return None
    return dict(enumerate(ds.class_names))


@task(name="register", cache_policy=NO_CACHE)
def register(model_uri: str, model_name: str, run_id: str, tags: dict[str, str]) -> str:
    """Register an already-logged model as a new version (alias ``candidate``)."""
    from nnpipe import tracking

    version = tracking.register_model(model_uri, model_name, run_id, tracking.version_tags(tags))
    get_run_logger().info("registered %s version %s from %s", model_name, version, model_uri)
    return str(version)


@task(name="evaluate-champion", cache_policy=NO_CACHE)
def evaluate_champion(run_id: str, model_name: str, score: Callable[[Model], dict[str, float]]
                      ) -> tuple[int, dict[str, float]] | None:
    """The champion a warm-started run began from, scored by ``score`` on this run's test split.

    Logged on the run as ``champion/test/<metric>`` beside the run's own
    ``test/<metric>``: both from the same rows. None when the run did not
    start from a champion.
    """
    from nnpipe import tracking

    started = tracking.client().get_run(run_id).data.tags.get(WARM_VERSION_TAG)
    if not started:
        return None
    metrics = {k: float(v) for k, v in score(tracking.version_model(model_name, int(started))).items()}
    tracking.log_final_metrics(run_id, metrics, prefix=CHAMPION_PREFIX)
    get_run_logger().info("champion v%s on this run's test split: %s", started,
                          {k: round(v, 4) for k, v in metrics.items()})
    return int(started), metrics


@task(name="promote", cache_policy=NO_CACHE)
def promote(model_name: str, version: str, metric: str, greater_is_better: bool, actor: str,
            baseline: tuple[int, dict[str, float]] | None = None) -> Any:
    """The promotion gate: ``champion`` moves only if the candidate beats it on ``metric``.

    ``baseline``: the champion this run started from and its metrics on this
    run's test split (:func:`evaluate_champion`); the gate then compares both
    on the same rows, and the version records where it started and both scores.
    """
    from nnpipe import tracking

    fresh = None
    if baseline is not None:
        started, scores = baseline
        value = scores.get(metric.removeprefix("test/"), scores.get(metric))
        fresh = None if value is None else (started, value)
        c = tracking.client()
        c.set_model_version_tag(model_name, version, "nnpipe.warm_start", f"champion v{started}")
        if value is not None:
            c.set_model_version_tag(model_name, version, SAME_SPLIT_TAG, f"champion v{started} {metric}={value:.6g}")
    decision = tracking.promote_if_better(model_name, version, metric, greater_is_better, actor, baseline=fresh)
    get_run_logger().info("promotion: %s", decision.reason)
    return decision


@task(name="record-outcome", cache_policy=NO_CACHE)
def record_outcome(run_id: str, model_name: str, version: str, decision: Any, description: str) -> None:
    """Tag the run with the gate's decision and end its description with what became of the model (dated)."""
    from nnpipe import tracking
    from nnpipe.tracking import links

    tags, outcome, _ = tracking.run_outcome(model_name, version, decision.promoted, decision.reason,
                                            links.model_url(tracking.tracking_uri(), model_name))
    tracking.set_run_tags(run_id, tags)  # dated: still true after the champion moves on
    note = tracking.client().get_run(run_id).data.tags.get("nnpipe.early_stopping")
    if note:  # why training ended where it did, and which epoch the model is
        outcome = f"{note[0].upper()}{note[1:]}.\n\n{outcome}"
    tracking.set_run_description(run_id, f"{description}\n\n{outcome}")

