"""Where a study lives and how it samples and prunes: storage, samplers, pruners.

Storage
-------
The study must be reachable from every Dask worker (each trial reports to it
after every epoch and asks it whether to stop) and must outlive the process,
so that ``--study NAME`` resumes it. The default is Optuna's ``JournalStorage``
on a file next to the MLflow store (``<dir of mlflow.db>/optuna.log``;
``./optuna.log`` when MLflow is a server): file-locked appends that every
process on the machine (a local cluster) reads, at ~4 ms per epoch's report
and pruning check where SQLite took ~40 ms on the same loaded machine.
Anything Optuna accepts can replace it, by ``storage=`` / ``--storage`` or
``NNPIPE_OPTUNA_STORAGE``: an RDB URL (``sqlite:///optuna.db``, for
machines of their own ``postgresql://...`` or ``mysql://...``) or a journal
file on a file system every worker mounts (a path ending in ``.log``, or
``journal:PATH``).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import optuna

ENV_STORAGE = "NNPIPE_OPTUNA_STORAGE"
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
# Median pruner: judge from the 2nd finished trial on, never in a trial's first 3 epochs
# (Optuna's own default of 5 startup trials would prune nothing in a study of 6).
MEDIAN_STARTUP_TRIALS = 2
MEDIAN_WARMUP_EPOCHS = 3

_storages: dict[str, optuna.storages.BaseStorage] = {}
_lock = threading.Lock()


def default_storage(tracking_uri: str | None) -> str:
    """``NNPIPE_OPTUNA_STORAGE``, else ``<dir of the MLflow SQLite file>/optuna.log``, else ``./optuna.log``."""
    env = os.environ.get(ENV_STORAGE)
    if env:
        return env
    from nnpipe.tracking.store import (
        sqlite_path,  # here, not at import: workers never load mlflow
    )

    db = sqlite_path(tracking_uri) if tracking_uri else None
    folder = db.parent if db is not None else Path.cwd()
    return str(folder / "optuna.log")


def journal_path(url: str) -> str | None:
    if url.startswith("journal:"):
        return url[len("journal:"):]
    if "://" not in url and url.endswith((".log", ".jsonl")):
        return url
    return None


def get_storage(url: str) -> optuna.storages.BaseStorage:
    """The storage for ``url``, one per process (workers reuse it across trials)."""
    with _lock:
        if url not in _storages:
            journal = journal_path(url)
            if journal is not None:
                from optuna.storages.journal import JournalFileBackend

                _storages[url] = optuna.storages.JournalStorage(JournalFileBackend(journal))
            elif "://" in url:
                # Workers and the driver write at once; wait for SQLite's lock instead of failing at 5 s.
                kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
                storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
                if url.startswith("sqlite"):
                    _fast_sqlite(storage)
                _storages[url] = storage
            else:
                raise ValueError(f"storage {url!r}: expected an RDB URL (sqlite:///optuna.db, postgresql://...) "
                                 "or a journal file (a path ending in .log, or journal:PATH)")
        return _storages[url]


def _fast_sqlite(storage: optuna.storages.RDBStorage) -> None:
    """WAL journal and ``synchronous=NORMAL``: a report per epoch costs one append, not an fsync.

    With WAL, readers (every worker asking ``should_prune``) no longer block the
    writer; NORMAL still survives a crashed process, and a power cut loses at
    most the last reports, never the database.
    """
    from sqlalchemy import event

    def on_connect(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(storage.engine, "connect", on_connect)
    storage.engine.dispose()  # connections opened while creating the tables get the pragmas too


def quiet_optuna() -> None:
    """Optuna's own INFO lines ("A new study created ...", "Trial 3 finished ...") off: callers report trials."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)



def make_sampler(name: str, seed: int | None, grid: dict | None = None) -> optuna.samplers.BaseSampler:
    """``tpe``, ``random`` or ``grid`` (``grid``: the space's choices), seeded."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(grid or {}, seed=seed)
    raise ValueError(f"sampler must be one of {list(SAMPLERS)}, got {name!r}")


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """``median``, ``hyperband`` (budget: ``epochs``) or ``none``."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS,
                                           n_warmup_steps=min(MEDIAN_WARMUP_EPOCHS, max(0, epochs - 1)))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"pruner must be one of {list(PRUNERS)}, got {name!r}")


def open_study(name: str, storage: str, direction: str, sampler: optuna.samplers.BaseSampler | None = None,
               pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """Create study ``name`` in ``storage``, or load it if it exists (a resume)."""
    return optuna.create_study(study_name=name, storage=get_storage(storage), sampler=sampler, pruner=pruner,
                               direction=direction, load_if_exists=True)


def study_exists(name: str, storage: str) -> bool:
    try:
        get_storage(storage).get_study_id_from_name(name)
    except KeyError:
        return False
    return True
