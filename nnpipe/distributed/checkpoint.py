"""Checkpoints of a distributed run: one ``.npz`` per saved epoch in a directory.

A checkpoint holds the global parameters, the driver's optimizer state (sync),
every trainer's optimizer state and stream position (local-sgd, async), the
epoch, the history, the early-stopping record and the config. Files are
written to a temporary name and renamed, so a crash never leaves a torn one;
:func:`load_latest` reads the newest.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

_NAME = re.compile(r"^ckpt-(\d{6})\.npz$")


def save(directory: str | os.PathLike, epoch: int, *, theta: np.ndarray, opt_state: dict[str, np.ndarray] | None,
         trainer_states: dict[int, dict[str, Any]] | None, meta: dict[str, Any],
         best_theta: np.ndarray | None = None) -> Path:
    """Write ``ckpt-<epoch>.npz`` into ``directory``; returns its path.

    Parameters
    ----------
    theta : ndarray of shape (n_params,)
    opt_state : dict of ndarray, optional
        The driver's optimizer state (``sync``).
    trainer_states : dict of int to dict, optional
        Per shard: ``ShardTrainer.get_state()`` output.
    meta : dict
        JSON-serialisable facts (mode, history, early stopping, config).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {"theta": theta}
    if best_theta is not None:
        arrays["best_theta"] = best_theta
    for k, v in (opt_state or {}).items():
        arrays[f"opt/{k}"] = np.asarray(v)
    # Trainer states hold rng states (nested dicts of big ints) next to arrays:
    # pickled into one byte array, read back only by this module.
    arrays["trainers"] = np.frombuffer(pickle.dumps(trainer_states or {}), dtype=np.uint8)
    arrays["meta"] = np.frombuffer(json.dumps({**meta, "epoch": epoch}).encode(), dtype=np.uint8)
    path = directory / f"ckpt-{epoch:06d}.npz"
    tmp = directory / f".ckpt-{epoch:06d}.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def latest_path(directory: str | os.PathLike | None) -> Path | None:
    """The newest checkpoint in ``directory`` (None if there is none)."""
    if directory is None or not Path(directory).is_dir():
        return None
    found = sorted(p for p in Path(directory).iterdir() if _NAME.match(p.name))
    return found[-1] if found else None


def load(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint: ``theta``, ``opt_state``, ``trainer_states`` and the ``meta`` fields."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(bytes(z["meta"]).decode())
        out = {
            "theta": z["theta"].copy(),
            "opt_state": {k[4:]: z[k].copy() for k in z.files if k.startswith("opt/")},
            "trainer_states": pickle.loads(bytes(z["trainers"])),
            "best_theta": z["best_theta"].copy() if "best_theta" in z.files else None,
        }
    out.update(meta)
    return out


def load_latest(directory: str | os.PathLike | None) -> dict[str, Any] | None:
    path = latest_path(directory)
    return None if path is None else {**load(path), "path": str(path)}
