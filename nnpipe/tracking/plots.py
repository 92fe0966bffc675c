"""Run artefacts: learning curves and a confusion matrix as PNG, the resolved configuration, checkpoints.

Matplotlib runs with the Agg backend (no display; safe in workers and CI).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

# The object-oriented API draws with the Agg canvas and touches no global
# backend, so importing this module changes nothing for a user's notebook.
from matplotlib.figure import Figure

from nnpipe.tracking.runs import as_mapping
from nnpipe.tracking.store import client


def plot_curves(history: Mapping[str, Sequence[float]], suffix: str, path: Path, title: str) -> Path | None:
    """One line per history key ending in ``suffix`` (e.g. ``loss``); None when there is none."""
    keys = sorted(k for k in history if k.endswith(suffix) and len(history[k]))
    if not keys:
        return None
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.subplots()
    for key in keys:
        values = np.asarray(history[key], dtype=float)
        ax.plot(np.arange(1, len(values) + 1), values, label=key, marker="." if len(values) < 30 else None)
    ax.set_xlabel("epoch / round")
    ax.set_ylabel(suffix)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return path


def confusion_matrix(y_true: Sequence[Any], y_pred: Sequence[Any], classes: Sequence[Any] | None = None) -> tuple[np.ndarray, list]:
    """Counts ``C[i, j]`` of true class ``i`` predicted as ``j``, and the class order."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has shape {y_true.shape} but y_pred has shape {y_pred.shape}")
    labels = list(np.unique(np.concatenate([y_true, y_pred]))) if classes is None else list(classes)
    index = {label: i for i, label in enumerate(labels)}
    C = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(y_true.tolist(), y_pred.tolist()):
        if t not in index or p not in index:
            raise ValueError(f"label {t if t not in index else p!r} is not one of the classes {labels!r}")
        C[index[t], index[p]] += 1
    return C, labels


def plot_confusion(C: np.ndarray, labels: list, path: Path, title: str = "confusion matrix (test)") -> Path:
    """Confusion-matrix heat map with the count in each cell."""
    n = len(labels)
    size = max(4.0, 0.5 * n + 2)
    fig = Figure(figsize=(size, size), dpi=100)
    ax = fig.subplots()
    ax.imshow(C, cmap="Blues")
    ax.set_xticks(range(n), [str(x) for x in labels], rotation=45 if n > 6 else 0)
    ax.set_yticks(range(n), [str(x) for x in labels])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    threshold = C.max() / 2 if C.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(C[i, j]), ha="center", va="center",
                    color="white" if C[i, j] > threshold else "black")
    fig.tight_layout()
    fig.savefig(path)
    return path


def _plain(value: Any) -> Any:
    """JSON/YAML-safe: numpy scalars and arrays to Python, tuples to lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def log_training_artifacts(
    run_id: str,
    history: Mapping[str, Sequence[float]],
    config: Mapping[str, Any],
    y_true: Sequence[Any] | None = None,
    y_pred: Sequence[Any] | None = None,
    classes: Sequence[Any] | None = None,
    confusion: tuple[np.ndarray, list] | None = None,
    title: str = "",
    label_names: Mapping[Any, str] | None = None,
) -> list[str]:
    """Log curves, the resolved configuration and (given labels) a confusion matrix.

    Parameters
    ----------
    run_id : str
    history : mapping of str to list of float
        ``FitResult.history``: one value per epoch or round per key.
    config : mapping
        The resolved configuration (e.g. ``TrainConfig.to_dict()`` plus data and model settings).
    y_true, y_pred : array-like of shape (n_samples,), optional
        Held-out labels and predictions (original labels).
    classes : array-like, optional
        Class order for the matrix; default: the sorted labels seen.
    confusion : (counts, labels), optional
        A confusion matrix already counted (e.g. on the workers, for a large source)
        instead of ``y_true`` and ``y_pred``.
    title : str
        Names the run and model version in every plot's title.
    label_names : mapping, optional
        Readable names of the labels (``{0: "setosa", ...}``) for the matrix axes.

    Returns
    -------
    list of str
        Artifact paths logged, relative to the run's artifact root: the plots
        (``loss.png``, ``accuracy.png``, ``confusion_matrix.png``) at the root,
        where MLflow's run comparison finds them; ``plots/confusion_matrix.json``
        and ``config/*``.
    """
    import yaml

    c = client()
    logged: list[str] = []
    with tempfile.TemporaryDirectory(prefix="nnpipe-artifacts-") as tmp:
        tmp = Path(tmp)
        plots = tmp / "plots"
        plots.mkdir()
        head = f"{title}\n" if title else ""
        plot_curves(history, "loss", plots / "loss.png", f"{head}loss")
        plot_curves(history, "accuracy", plots / "accuracy.png", f"{head}accuracy")
        if confusion is not None or (y_true is not None and y_pred is not None):
            C, labels = confusion if confusion is not None else confusion_matrix(y_true, y_pred, classes)
            names = [str((label_names or {}).get(label, label)) for label in _plain(labels)]
            plot_confusion(C, names, plots / "confusion_matrix.png", f"{head}confusion matrix (test)")
            (plots / "confusion_matrix.json").write_text(
                json.dumps({"labels": _plain(labels), "counts": C.tolist()}, indent=2)
            )
        cfg = tmp / "config"
        cfg.mkdir()
        plain = _plain(dict(as_mapping(config)))
        (cfg / "config.json").write_text(json.dumps(plain, indent=2, sort_keys=True, default=str))
        (cfg / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(plain, default=str)), sort_keys=True))
        (cfg / "history.json").write_text(json.dumps(_plain(dict(history)), default=str))
        # The PNGs go at the artifact root: MLflow's run-comparison view shows only
        # root-level files common to the runs ("No common artifacts" otherwise).
        for png in sorted(plots.glob("*.png")):
            c.log_artifact(run_id, str(png))
            logged.append(png.name)
            png.unlink()
        for folder in (plots, cfg):
            if any(folder.iterdir()):
                c.log_artifacts(run_id, str(folder), artifact_path=folder.name)
                logged += [f"{folder.name}/{p.name}" for p in sorted(folder.iterdir())]
    return logged


def log_checkpoints(run_id: str, checkpoint_dir: str | os.PathLike | None) -> bool:
    """Log a checkpoint directory under ``checkpoints/`` so the run can be resumed; False if empty/missing."""
    if not checkpoint_dir or not Path(checkpoint_dir).is_dir() or not any(Path(checkpoint_dir).iterdir()):
        return False
    client().log_artifacts(run_id, str(checkpoint_dir), artifact_path="checkpoints")
    return True


def fetch_checkpoints(run_id: str, checkpoint_dir: str | os.PathLike) -> int:
    """Download the ``checkpoints/`` artefacts of ``run_id`` into ``checkpoint_dir``; returns how many files.

    Raises
    ------
    TrackingError
        If the run logged no checkpoints (nothing to resume from).
    """
    from nnpipe.tracking.errors import TrackingError

    c = client()
    try:
        c.get_run(run_id)
    except Exception as exc:
        raise TrackingError(f"cannot resume: no MLflow run {run_id!r} in this store ({exc})") from None
    files = [f for f in c.list_artifacts(run_id, "checkpoints") if not f.is_dir]
    if not files:
        raise TrackingError(f"cannot resume: run {run_id!r} logged no checkpoints")
    dest = Path(checkpoint_dir)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(c.download_artifacts(run_id, "checkpoints", tmp))
        for f in local.iterdir():
            shutil.copy2(f, dest / f.name)
    return len(files)
