"""Lineage tags for a run: which data, which code, which cluster."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

from nnpipe.version import __version__


def git_revision(path: str | Path | None = None) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the git checkout holding ``path`` (default: nnpipe's source), or ``(None, None)``."""
    where = Path(path) if path is not None else Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10
        )
        if rev.returncode != 0:
            return None, None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where, capture_output=True, text=True, timeout=10,
        )
        return rev.stdout.strip(), bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None, None  # no git installed, or not a checkout: an installed package


VERSION_TAG_KEYS = ("dataset.hash",)  # the rest of the lineage is on the run, one click away


def version_tags(lineage: dict[str, Any], **extra: Any) -> dict[str, str]:
    """The few lineage tags a model version carries (the data's hash), plus ``extra``.

    The versions list shows every tag of every version; the whole lineage
    (:func:`run_tags`) stays on the run, which ``nnpipe.run_id`` names.
    """
    out = {k: str(lineage[k]) for k in VERSION_TAG_KEYS if lineage.get(k) is not None}
    out.update({k: str(v) for k, v in extra.items() if v is not None})
    return out


def run_tags(
    dataset_name: str,
    dataset_hash: str,
    cluster_address: str | None = None,
    workers: int | None = None,
    **extra: Any,
) -> dict[str, str]:
    """Tags recording a run's lineage.

    Parameters
    ----------
    dataset_name, dataset_hash : str
        Name and content hash (e.g. ``Dataset.name``, ``Dataset.content_hash``).
    cluster_address : str, optional
        Dask scheduler address when trained on a cluster.
    workers : int, optional
        Number of Dask workers that trained.
    **extra
        More tags, added as given.

    Returns
    -------
    dict of str to str
        ``dataset.name``, ``dataset.hash``, ``nnpipe.version``, ``python.version``,
        and when known ``nnpipe.git_commit`` (also as MLflow's
        ``mlflow.source.git.commit``), ``nnpipe.git_dirty``,
        ``dask.address``, ``dask.workers``.
    """
    tags: dict[str, Any] = {
        "dataset.name": dataset_name,
        "dataset.hash": dataset_hash,
        "nnpipe.version": __version__,
        "python.version": platform.python_version(),
    }
    commit, dirty = git_revision()
    if commit:
        tags["nnpipe.git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
        tags["nnpipe.git_dirty"] = dirty
    if cluster_address:
        tags["dask.address"] = cluster_address
    if workers is not None:
        tags["dask.workers"] = int(workers)
    tags.update(extra)
    return {k: str(v) for k, v in tags.items() if v is not None}


def log_dataset(run_id: str, ds: Any, context: str = "training", split_rows: dict[str, int] | None = None) -> str:
    """Log ``ds`` (an :class:`nnpipe.data.Dataset`) as the run's MLflow dataset input; returns its digest.

    The run page's Datasets panel then shows its name, source, schema (feature
    and target columns with types), row count and fingerprint: the first 16
    hex digits of its content hash, the same data as the ``dataset.hash`` tag.

    Parameters
    ----------
    run_id : str
    ds : nnpipe.data.Dataset
    context : str
        MLflow's input context tag (``training``, ``evaluation``).
    split_rows : dict, optional
        Rows per split part (``train``, ``val``, ``test``), kept as input tags.
    """
    import pandas as pd
    from mlflow.data import from_pandas
    from mlflow.entities import DatasetInput, InputTag

    from nnpipe.tracking.store import client

    from pathlib import Path

    from mlflow.data.code_dataset_source import CodeDatasetSource

    frame = pd.DataFrame(ds.X, columns=list(ds.feature_names))
    frame[ds.target] = ds.y
    digest = str(ds.content_hash)[:16]
    path = Path(str(ds.source))
    if path.is_file():
        import warnings

        from mlflow.data.dataset_source_registry import resolve_dataset_source

        with warnings.catch_warnings():  # MLflow registers its local-file source twice and says so
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(path.resolve()))
    else:  # a built-in dataset: made by code, not read from a file
        source = CodeDatasetSource({"nnpipe.builtin": str(ds.source)})
    dataset = from_pandas(frame, source=source, targets=ds.target, name=ds.name, digest=digest)
    tags = [InputTag("mlflow.data.context", context), InputTag("nnpipe.task", str(ds.task))]
    for part, rows in (split_rows or {}).items():
        tags.append(InputTag(f"nnpipe.rows.{part}", str(int(rows))))
    client().log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=tags)])
    return digest
