"""``nnpipe.tuning.tune``: a whole study from Python (a notebook), with no Prefect.

The Prefect flow ``nnpipe-tune`` (``nnpipe tune``) calls the same function
after loading and splitting the data as its own tasks.
"""

from __future__ import annotations

import datetime as _dt
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable

from nnpipe import metrics, tracking
from nnpipe.config import TrainConfig
from nnpipe.data.load import Dataset, Splits, load_dataset, split_and_scale
from nnpipe.distributed.cluster import connect, worker_addresses
from nnpipe.names import default_model_name
from nnpipe.tuning import report, resume
from nnpipe.tuning.resume import stored_attrs
from nnpipe.tuning.runner import StudyRunner, TrialResult
from nnpipe.tuning.settings import DEFAULT_TRIALS, TuneSettings
from nnpipe.tuning.space import SpaceError, parse_space
from nnpipe.tuning.study import (
    default_storage,
    get_storage,
    make_pruner,
    make_sampler,
    open_study,
)

STUDY_ATTRS = ("nnpipe.dataset", resume.SPACE_ATTR, resume.METRIC_ATTR, resume.SAMPLER_ATTR, resume.PRUNER_ATTR,
               "nnpipe.parent_run_id", "nnpipe.experiment", "nnpipe.base")


@dataclass
class TuneResult:
    """What one invocation of a study did (a resumed study's earlier trials count in ``best``)."""

    study: str
    storage: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    metric: str
    trials: list[TrialResult]
    best: dict[str, Any] | None
    registered: dict[str, Any] | None
    model_name: str
    epochs_trained: int
    wall_s: float  # the whole call
    resumed: bool
    artifacts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. a resumed study trained with another base config
    summary: str = ""  # the markdown table of every trial of the study
    trials_s: float = 0.0  # the trials alone: first submitted to last finished
    sampler: str = ""  # what this invocation sampled and pruned with (a resume: the study's own unless given)
    pruner: str = ""

    def counts(self) -> dict[str, int]:
        out = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0}
        for t in self.trials:
            out[t.state] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["trials"] = [asdict(t) for t in self.trials]
        return out


def _default_study_name(dataset: str) -> str:
    """The model's default name and the start time: ``nnpipe-digits-20261205-201500``."""
    return f"{default_model_name(dataset)}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _base(train: TrainConfig, hidden: list[int] | tuple[int, ...], activation: str) -> dict[str, Any]:
    """What every trial starts from (the seed aside: a resume may reseed), as the study records it."""
    return {**{k: v for k, v in train.to_dict().items() if k != "seed"}, "hidden": list(hidden),
            "activation": activation}


def _base_changes(stored: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """``["epochs=40 -> 100", ...]``: settings a resumed study's new trials start from differently."""
    if not stored:
        return []
    return [f"{k}={stored.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(stored) | set(now))
            if stored.get(k) != now.get(k)]


def _prepare_data(data: str | Dataset | Splits, target: str | None, test_size: float, val_size: float,
                  seed: int) -> tuple[Splits, str, str | None, Dataset | None]:
    if isinstance(data, Splits):
        return data, "data", None, None
    ds = data if isinstance(data, Dataset) else load_dataset(data, target=target)
    return split_and_scale(ds, test_size=test_size, val_size=val_size, seed=seed), ds.name, ds.content_hash, ds


@dataclass
class StudyPlan:
    """Everything a study's invocation resolved before it opens anything: what, on which data, how judged."""

    name: str
    storage: str
    tracking_uri: str
    resumed: bool
    entries: list[str]
    space: Any  # the parsed search space
    sampler: str
    pruner: str
    metric: str  # the validation metric trials are judged by
    direction: str
    grid: dict | None
    n_trials: int
    sampler_seed: int
    timeout: float | None
    parallel: int | None
    train: TrainConfig
    hidden: list[int]
    activation: str
    splits: Splits
    dataset: str
    content_hash: str | None
    model_name: str
    gate_metric: str  # the test metric the promotion gate compares
    greater_is_better: bool
    parent_run_id: str | None  # a resumed study's parent run
    notes: list[str] = field(default_factory=list)
    page: Any = None  # report.PageFacts: what the champion's run page shows beyond the study

    @property
    def grid_size(self) -> int | None:
        return math.prod(len(v) for v in self.grid.values()) if self.grid else None

    @property
    def base(self) -> dict[str, Any]:
        return _base(self.train, self.hidden, self.activation)


def resolve(data: str | Dataset | Splits, space: list[str] | dict[str, str] | None, settings: TuneSettings,
            *, train: TrainConfig | None = None, hidden: list[int] | tuple[int, ...] = (64, 32),
            activation: str = "relu", target: str | None = None, test_size: float = 0.2, val_size: float = 0.1,
            dataset_name: str | None = None, content_hash: str | None = None, tracking_uri: str | None = None,
            model_name: str | None = None, promotion_metric: str | None = None,
            greater_is_better: bool | None = None) -> StudyPlan:
    """Check the settings and space, load the data and settle a resumed study's own choices; opens nothing.

    Raises before any run, study or cluster exists: a bad space entry, a trial
    mode other than ``single``, a resume with another space, metric or dataset.
    """
    if isinstance(space, dict):
        space = [f"{k}={v}" for k, v in space.items()]
    settings = settings.override(space=space)
    train = replace(train or TrainConfig(), checkpoint_every=0)
    if train.mode != "single":
        raise ValueError(f"config field 'mode': tune trains each trial in one process on a worker, so mode must be "
                         f"'single', got {train.mode!r} (trials run in parallel instead)")
    entries = list(settings.space)
    if entries:
        parse_space(entries, base=train)  # fail on a bad entry before anything else
    uri = tracking.configure(tracking_uri)
    store = settings.storage or default_storage(uri)
    name = settings.study
    found = stored_attrs(name, store) if name is not None else None
    resumed, stored = found is not None, (found[1] if found else {})
    # A resume continues with the study's own space, sampler, pruner and metric unless given, and
    # refuses a space or metric that is not its own (before any data, run or cluster).
    chosen = resume.resolve(name, stored, space=entries, sampler=settings.sampler, pruner=settings.pruner,
                            metric=settings.metric)
    entries, sampler_name = chosen["space"], chosen["sampler"]
    if not entries:
        raise SpaceError("the search space is empty; give at least one --space NAME=EXPR, "
                         "e.g. --space 'lr=loguniform(1e-4,1e-1)'")
    parsed = parse_space(entries, base=train)
    splits, ds_name, loaded_hash, ds = _prepare_data(data, target, test_size, val_size, train.seed)
    ds_name, content_hash = dataset_name or ds_name, content_hash or loaded_hash
    if resumed and stored.get("nnpipe.dataset") not in (None, ds_name):
        raise ValueError(f"study {name!r} was run on dataset {stored['nnpipe.dataset']!r}, not {ds_name!r}")
    task = "multiclass" if splits.classes is not None else "regression"
    metric_name = chosen["metric"] or ("val/accuracy" if task != "regression" else "val/loss")
    grid = parsed.grid() if sampler_name == "grid" else None
    grid_size = math.prod(len(v) for v in grid.values()) if grid else None
    sampler_seed = train.seed if settings.seed is None else settings.seed
    if resumed and grid is None:
        # A resumed study must not replay its first configurations: offset the seed by the trials it
        # has (still reproducible). The grid keeps its seed: it fixes the order grid ids refer to.
        sampler_seed += len(get_storage(store).get_all_trials(found[0], deepcopy=False))
    gate_metric = (promotion_metric or metrics.default_metric(task)).removeprefix("test/")
    changes = _base_changes(stored.get("nnpipe.base"), _base(train, hidden, activation))
    return StudyPlan(
        name=name or _default_study_name(ds_name), storage=store, tracking_uri=uri, resumed=resumed,
        entries=entries, space=parsed, sampler=sampler_name, pruner=chosen["pruner"], metric=metric_name,
        direction=metrics.direction(metric_name), grid=grid,
        n_trials=settings.trials or (grid_size if grid_size else DEFAULT_TRIALS), sampler_seed=sampler_seed,
        timeout=settings.timeout, parallel=settings.parallel, train=train, hidden=list(hidden),
        activation=activation, splits=splits, dataset=ds_name, content_hash=content_hash,
        model_name=model_name or default_model_name(ds_name), gate_metric=gate_metric,
        greater_is_better=metrics.greater_is_better(gate_metric) if greater_is_better is None else greater_is_better,
        parent_run_id=stored.get("nnpipe.parent_run_id") if resumed else None,
        notes=[f"study {name!r} was run with other settings; its new trials use {', '.join(changes)} (pass the "
               "earlier options to keep the trials comparable)"] if changes else [],
        page=report.PageFacts(ds=ds, splits=splits, hidden=list(hidden), activation=activation,
                              test_size=test_size, val_size=val_size, space=entries))


def open_plan_study(plan: StudyPlan) -> Any:
    """Create or load the plan's Optuna study; a resumed study must optimise the same way."""
    study = open_study(plan.name, plan.storage, plan.direction, make_sampler(plan.sampler, plan.sampler_seed, plan.grid),
                       make_pruner(plan.pruner, plan.train.epochs))
    if study.direction.name.lower() != plan.direction:
        raise ValueError(f"study {plan.name!r} {study.direction.name.lower()}s; metric {plan.metric!r} needs "
                         f"{plan.direction}")
    return study


def run_trials(plan: StudyPlan, study: Any, parent_id: str, *, address: str | None = None, client: Any = None,
               workers: int = 2, on_result: Callable[[TrialResult], None] | None = None
               ) -> tuple[list[TrialResult], StudyRunner, float, dict[str, str]]:
    """Run the plan's trials on the Dask cluster, K at once; returns results, the runner, seconds, lineage tags."""
    with connect(address=address, client=client, workers=workers) as dask_client:
        k = plan.parallel or max(1, len(worker_addresses(dask_client)) or workers)
        lineage = tracking.run_tags(plan.dataset, plan.content_hash, dask_client.scheduler.address, None) \
            if plan.content_hash else {}
        tracking.set_run_tags(parent_id, {**lineage, "nnpipe.tune.parallel": k})
        runner = StudyRunner(study, plan.space, plan.splits, plan.train, plan.hidden, plan.activation, dask_client,
                             storage=plan.storage, pruner=plan.pruner, metric=plan.metric, parallel=k,
                             parent_run_id=parent_id, on_result=on_result, grid_size=plan.grid_size)
        t0 = time.perf_counter()
        results = runner.run(plan.n_trials, plan.timeout)
        return results, runner, time.perf_counter() - t0, lineage


def tune(
    data: str | Dataset | Splits = "iris",
    space: list[str] | dict[str, str] | None = None,
    settings: TuneSettings | None = None,
    *,
    train: TrainConfig | None = None,
    hidden: list[int] | tuple[int, ...] = (64, 32),
    activation: str = "relu",
    target: str | None = None,
    test_size: float = 0.2,
    val_size: float = 0.1,
    dataset_name: str | None = None,
    content_hash: str | None = None,
    experiment: str = "nnpipe",
    model_name: str | None = None,
    promotion_metric: str | None = None,
    greater_is_better: bool | None = None,
    tracking_uri: str | None = None,
    address: str | None = None,
    client: Any = None,
    workers: int = 2,
    tags: dict[str, Any] | None = None,
    on_result: Callable[[TrialResult], None] | None = None,
    actor: str | None = None,
    **overrides: Any,
) -> TuneResult:
    """Run (or resume) an Optuna study of trainings on a Dask cluster; register and gate the best model.

    Four steps: :func:`resolve` the plan (no side effect), :func:`open_plan_study`,
    :func:`run_trials` under the study's parent MLflow run, then
    :func:`nnpipe.tuning.report.conclude` (register and gate the best).

    Parameters
    ----------
    data : str, Dataset or Splits
        A built-in dataset name or CSV/Parquet path (with ``target``), or data already split.
    space : list of str or dict
        ``["lr=loguniform(1e-4,1e-1)", "optimizer=choice(adam,sgd)"]`` or ``{"lr": "loguniform(1e-4,1e-1)"}``
        (grammar: :mod:`nnpipe.tuning.space`). May be omitted when resuming a study.
    settings : TuneSettings, optional
        How to search: trials, timeout, sampler, pruner, parallel, study, storage, seed, metric.
        ``parallel`` defaults to the number of workers; ``seed`` to ``train.seed``; ``metric`` to
        ``val/accuracy`` (classification) or ``val/loss`` (regression).
    **overrides
        Any :class:`TuneSettings` field by name (``trials=20, sampler="random"``), over ``settings``.
    dataset_name, content_hash : str, optional
        Lineage of data given already split (the name and hash of the dataset it came from).
    train : TrainConfig, optional
        The base configuration every trial starts from (mode must be ``single``:
        a trial is one process on a worker).
    address, client, workers
        The Dask cluster (:func:`nnpipe.distributed.connect`).

    Returns
    -------
    TuneResult

    Raises
    ------
    SpaceError
        A bad search-space entry, before any run or study is created.
    TypeError
        An unknown keyword (neither a parameter nor a :class:`TuneSettings` field).

    Examples
    --------
    Two trials of a one-parameter space on iris, side by side on the cluster
    (``address=``, ``client=``, ``DASK_SCHEDULER_ADDRESS``, or a local cluster of
    ``workers`` processes). The study goes to ``./optuna.log``, its runs and
    the best trial's registered model to ``./mlflow.db``:

    >>> from nnpipe import TrainConfig
    >>> from nnpipe.tuning import tune
    >>> result = tune("iris", ["lr=loguniform(1e-3,1e-1)"], trials=2, parallel=2, study="iris-doc",
    ...               train=TrainConfig(epochs=3, seed=0))
    >>> sum(result.counts().values()), result.metric
    (2, 'val/accuracy')
    >>> sorted(result.best["params"])
    ['lr']
    >>> result.registered["version"]            # the first version of nnpipe-iris in this store
    '1'

    Calling it again with the same ``study`` resumes it with its own space
    (``tune("iris", study="iris-doc", trials=10)``); ``result.resumed`` says so.
    """
    t0 = time.perf_counter()
    known = {f.name for f in fields(TuneSettings)} - {"space"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"tune() got unknown keyword argument(s) {unknown}; settings are {sorted(known)}")
    plan = resolve(data, space, (settings or TuneSettings()).override(**overrides), train=train, hidden=hidden,
                   activation=activation, target=target, test_size=test_size, val_size=val_size,
                   dataset_name=dataset_name, content_hash=content_hash, tracking_uri=tracking_uri,
                   model_name=model_name, promotion_metric=promotion_metric, greater_is_better=greater_is_better)
    the_study = open_plan_study(plan)
    params = {"dataset": plan.dataset, **plan.train.applicable(), "hidden": ",".join(map(str, plan.hidden)),
              "activation": plan.activation, "tune.space": plan.entries, "tune.sampler": plan.sampler,
              "tune.pruner": plan.pruner, "tune.metric": plan.metric, "tune.study": plan.name,
              "tune.storage": plan.storage}
    run_tags = {"nnpipe.flow": "nnpipe-tune", "nnpipe.tune.study": plan.name, "nnpipe.tune.storage": plan.storage,
                **(tags or {})}
    with tracking.training_run(experiment, {} if plan.parent_run_id else params, tags=run_tags,
                               run_name=f"tune-{plan.name}", run_id=plan.parent_run_id) as parent:
        parent_id = parent.info.run_id
        for key, value in {"nnpipe.dataset": plan.dataset, resume.SPACE_ATTR: plan.entries,
                           resume.METRIC_ATTR: plan.metric, resume.SAMPLER_ATTR: plan.sampler,
                           resume.PRUNER_ATTR: plan.pruner, "nnpipe.parent_run_id": parent_id,
                           "nnpipe.experiment": experiment, "nnpipe.base": plan.base}.items():
            the_study.set_user_attr(key, value)
        results, runner, t_trials, lineage = run_trials(plan, the_study, parent_id, address=address, client=client,
                                                        workers=workers, on_result=on_result)
        epochs = sum(r.epochs for r in results)
        best_info, registered, artifacts = report.conclude(
            the_study, parent_id, plan.metric, epochs, runner.best_model, plan.splits.raw_test[:5], plan.model_name,
            plan.gate_metric, plan.greater_is_better, actor or f"tune:{plan.name}",
            {**lineage, "nnpipe.tune.parent": parent_id}, page=plan.page)
    return TuneResult(study=plan.name, storage=plan.storage, tracking_uri=plan.tracking_uri,
                      experiment_id=parent.info.experiment_id, parent_run_id=parent_id, metric=plan.metric,
                      trials=results, best=best_info, registered=registered, model_name=plan.model_name,
                      epochs_trained=epochs, wall_s=time.perf_counter() - t0, resumed=plan.resumed,
                      artifacts=artifacts, summary=report.summary_markdown(the_study, plan.metric),
                      trials_s=t_trials, notes=plan.notes, sampler=plan.sampler, pruner=plan.pruner)


__all__ = ["StudyPlan", "TuneResult", "open_plan_study", "resolve", "run_trials", "tune"]
