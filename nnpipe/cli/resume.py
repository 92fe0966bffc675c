"""``nnpipe train --resume-from RUN_ID``: the earlier run's settings restored, checked before anything starts.

The earlier run's dataset, target, features, network, mode, workers and
training settings come back from the run itself (the ``nnpipe.config`` tag
the pipeline writes when a run starts; its params for older runs). A config
file and flags override what they name, except what the checkpoint fixes
(the data, the network, the mode): changing that is refused here, as are an
unknown id and a missing or unreadable checkpoint, each in one line, before
a Prefect flow run or a new MLflow run exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

Fail = Callable[[str], None]


def restore(cfg: Any, config_file: Path | None, overrides: dict[str, Any], default_uri: Callable[[str | None], str],
            fail: Fail, echo: Callable[[str], None]) -> Any:
    """The ``PipelineConfig`` to run: ``cfg.resume_from``'s settings under the file's and the flags'."""
    from nnpipe.flows.config import (CHECKPOINT_FIELDS, CONFIG_TAG, ConfigError, build_config, explicit_values,
                                     values_from_params)
    from nnpipe.redact import move_credentials_to_env, redact
    from nnpipe.tracking.preflight import StoreUnavailable, check_store
    from nnpipe.tracking.store import sqlite_path

    run_id = cfg.resume_from
    uri = move_credentials_to_env(default_uri(cfg.tracking_uri))
    try:
        check_store(uri)
    except StoreUnavailable as exc:
        fail(redact(str(exc)))
    db = sqlite_path(uri) if uri.startswith("sqlite:") else None
    if db is not None and not db.is_file():  # reading it would create an empty store
        fail(f"cannot resume: no MLflow run {run_id!r}: the tracking store {db} does not exist")
    from nnpipe import tracking
    from nnpipe.tracking.restore import ResumeRefused, newest_checkpoint, run_settings

    tracking.configure(uri)
    try:
        settings, params, status = run_settings(run_id, CONFIG_TAG)
        base = settings if settings is not None else values_from_params(params)
        if not base:
            fail(f"cannot resume: run {run_id!r} is not an nnpipe train run (it has no settings to restore)")
        try:
            earlier = build_config(None, None, base=base)
            chosen = build_config(config_file, overrides, base=base)
        except ConfigError as exc:
            fail(str(exc))
        for key in CHECKPOINT_FIELDS:
            if key not in explicit_values(config_file, overrides):
                continue
            was, now = _get(earlier, key), _get(chosen, key)
            if was != now:
                fail(f"cannot resume run {run_id!r} with {key.removeprefix('train.')}={_show(now)}: its checkpoint is "
                     f"for {key.removeprefix('train.')}={_show(was)}; leave it out to resume, or drop --resume-from "
                     "to start a new run")
        meta = newest_checkpoint(run_id)
    except ResumeRefused as exc:
        fail(str(exc))
    if meta["mode"] != chosen.train.mode:
        fail(f"cannot resume: {meta['file']} of run {run_id!r} is for mode {meta['mode']!r}, "
             f"this run is mode {chosen.train.mode!r}")
    chosen.tracking_uri, chosen.resume_from = uri, run_id
    t = chosen.train
    where = "" if t.mode == "single" else f" on {t.workers} workers"
    echo(f"Resuming:    run {run_id} ({status.lower()}) from {Path(meta['file']).name} (after epoch {meta['epoch'] + 1} "
         f"of {t.epochs}): {chosen.dataset}, {'x'.join(map(str, chosen.hidden))} {chosen.activation}, {t.mode}{where}")
    return chosen


def _get(cfg: Any, key: str) -> Any:
    obj = cfg.train if key.startswith("train.") else cfg
    return getattr(obj, key.removeprefix("train."))


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)
