"""What ``--resume-from RUN_ID`` reads from the earlier run, checked before anything starts.

The run's settings (the tag the pipeline writes at its start, or its params
for a run that predates it) and its newest checkpoint, downloaded and read
once here so that an unknown id, a run without checkpoints or a truncated
file is one line before a Prefect flow run or a new MLflow run exists.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from nnpipe import checkpoint
from nnpipe.tracking.errors import TrackingError
from nnpipe.tracking.store import client


class ResumeRefused(TrackingError):
    """The run to resume from is unknown, or logged no readable checkpoint."""


def run_settings(run_id: str, tag: str) -> tuple[dict[str, Any] | None, dict[str, str], str]:
    """``(settings, params, status)`` of ``run_id``: the JSON of its ``tag`` (None if absent), its params, its status.

    Raises
    ------
    ResumeRefused
        No such run in the configured store.
    """
    try:
        run = client().get_run(run_id)
    except Exception:
        raise ResumeRefused(f"cannot resume: no MLflow run {run_id!r} in this store "
                            "(copy the id from `nnpipe train`'s output or the MLflow UI)") from None
    text = run.data.tags.get(tag)
    try:
        settings = json.loads(text) if text else None
    except ValueError:
        settings = None  # a tag edited by hand: fall back to the params
    return settings, dict(run.data.params), run.info.status


def newest_checkpoint(run_id: str) -> dict[str, Any]:
    """Download the newest checkpoint ``run_id`` logged and read it; returns its meta (``mode``, ``epoch``, ``n_params``).

    Raises
    ------
    ResumeRefused
        The run logged no checkpoints, or the newest cannot be read (truncated, not a checkpoint).
    """
    c = client()
    names = sorted(f.path for f in c.list_artifacts(run_id, "checkpoints")
                   if not f.is_dir and checkpoint.is_checkpoint_name(Path(f.path).name))
    if not names:
        raise ResumeRefused(f"cannot resume: run {run_id!r} logged no checkpoints (it ran with "
                            "checkpoint_every = 0, or stopped before its first one)")
    with tempfile.TemporaryDirectory(prefix="nnpipe-resume-") as tmp:
        local = c.download_artifacts(run_id, names[-1], tmp)
        try:
            arrays, meta = checkpoint.load(local)
        except ValueError as exc:
            raise ResumeRefused(f"cannot resume: {names[-1]} of run {run_id!r} {str(exc).split(': ', 1)[-1]}") from None
    return {"mode": meta.get("mode"), "epoch": meta.get("epoch"), "n_params": int(arrays["theta"].shape[0]),
            "file": names[-1]}
