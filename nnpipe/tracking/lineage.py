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
