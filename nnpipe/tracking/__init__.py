"""MLflow tracking for nnpipe: runs, metrics, pyfunc models, registry, promotion gate, rollback.

The only package in nnpipe that imports mlflow. Its modules, in three groups:

Store (where things are kept)
    :mod:`.store` (tracking URI, client), :mod:`.preflight` (is the store usable, in seconds),
    :mod:`.locking` and :mod:`.flock` (one cross-process lock per store), :mod:`.links` (browser URLs),
    :mod:`.errors` (what this package raises).
Runs (one MLflow run per training)
    :mod:`.runs` (lifecycle, params, tags, metrics), :mod:`.nested` (trial runs under a parent),
    :mod:`.heartbeat` (a run's driver and its heartbeat), :mod:`.orphans` (runs whose driver died, ended FAILED),
    :mod:`.lineage` (data, code and cluster tags; the dataset input), :mod:`.plots` (curves,
    confusion matrix, checkpoints), :mod:`.prometheus` (live ``/metrics`` while training),
    :mod:`.restore` (what ``--resume-from`` reads back: a run's settings, its newest checkpoint).
Registry (versions and who serves)
    :mod:`.pyfunc` (the model as an MLflow pyfunc, no pickle), :mod:`.integrity` (SHA-256 of every
    file, checked before a load), :mod:`.registry` (versions, aliases), :mod:`.promotion` (the gate,
    manual promotion, rollback), :mod:`.history` (every alias move), :mod:`.story` (the
    descriptions the registry page shows, every champion statement dated), :mod:`.pages` (the
    sweep at command start and the watcher that keep those pages in step with the aliases),
    :mod:`.serving` (what ``nnpipe serve`` needs: a verified load, the alias's target, live
    metrics on a version's run).

Typical use (what the flow does)::

    from nnpipe import tracking

    tracking.configure()  # MLFLOW_TRACKING_URI or sqlite:///<cwd>/mlflow.db
    with tracking.training_run("iris", params=config, tags=tracking.run_tags("iris", digest)) as run:
        run_id = run.info.run_id
        result = nnpipe.train(splits, config, callbacks=[tracking.metrics_callback(run_id)])
        tracking.log_final_metrics(run_id, model.evaluate(X_test, y_test))
        tracking.log_training_artifacts(run_id, result.history, config, y_test, model.predict(X_test))
        uri = tracking.log_model(run_id, model, X_test[:5])
    # only reached when training succeeded; a failed run ends FAILED with nnpipe.failure
    version = tracking.register_model(uri, "iris-mlp", run_id)
    decision = tracking.promote_if_better("iris-mlp", version)
"""

from nnpipe.tracking import links, nested
from nnpipe.tracking.errors import (
    LockTimeout,
    NotServableError,
    PromotionRefused,
    RegistrationRefused,
    RollbackRefused,
    TrackingError,
    UnknownModelError,
    UnknownVersionError,
)
from nnpipe.tracking.history import default_actor
from nnpipe.tracking.integrity import TamperedModel, load_model, verify
from nnpipe.tracking.lineage import git_revision, log_dataset, run_tags, version_tags
from nnpipe.tracking.locking import lock_path, store_lock
from nnpipe.tracking import pages, story
from nnpipe.tracking.orphans import DRIVER_DIED, Orphan, end_orphaned_runs
from nnpipe.tracking.story import run_outcome
from nnpipe.tracking.plots import fetch_checkpoints, log_checkpoints, log_training_artifacts
from nnpipe.tracking.promotion import (
    PromotionDecision,
    check_servable,
    promote,
    promote_if_better,
    rollback,
)
from nnpipe.tracking.pyfunc import NnpipePyfunc, log_model
from nnpipe.tracking.registry import (
    CANDIDATE,
    CHAMPION,
    alias_history,
    alias_version,
    get_version,
    list_models,
    list_versions,
    champion_model,
    previous_champion,
    register_model,
    sync_aliases,
    version_model,
)
from nnpipe.tracking.runs import (
    FAILURE_TAG,
    flatten_params,
    flush_metrics,
    log_final_metrics,
    log_params,
    metric_key,
    metrics_callback,
    run_status,
    set_run_description,
    set_run_tags,
    training_run,
)
from nnpipe.tracking.store import client, configure, reset, tracking_uri

__all__ = [
    "DRIVER_DIED",
    "Orphan",
    "end_orphaned_runs",
    "CANDIDATE",
    "CHAMPION",
    "FAILURE_TAG",
    "LockTimeout",
    "TamperedModel",
    "load_model",
    "verify",
    "NotServableError",
    "NnpipePyfunc",
    "PromotionDecision",
    "PromotionRefused",
    "RegistrationRefused",
    "RollbackRefused",
    "TrackingError",
    "UnknownModelError",
    "UnknownVersionError",
    "alias_history",
    "alias_version",
    "check_servable",
    "client",
    "configure",
    "default_actor",
    "flatten_params",
    "get_version",
    "git_revision",
    "list_models",
    "list_versions",
    "lock_path",
    "fetch_checkpoints",
    "log_checkpoints",
    "links",
    "log_dataset",
    "log_final_metrics",
    "log_model",
    "log_params",
    "log_training_artifacts",
    "flush_metrics",
    "metric_key",
    "metrics_callback",
    "nested",
    "champion_model",
    "pages",
    "previous_champion",
    "promote",
    "promote_if_better",
    "register_model",
    "reset",
    "rollback",
    "run_outcome",
    "story",
    "run_status",
    "run_tags",
    "set_run_description",
    "set_run_tags",
    "store_lock",
    "sync_aliases",
    "tracking_uri",
    "training_run",
    "version_model",
    "version_tags",
]
