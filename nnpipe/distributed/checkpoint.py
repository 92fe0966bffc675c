"""Checkpoints of a distributed run, stored with :mod:`nnpipe.checkpoint` (no pickle).

A checkpoint holds the global parameters, the driver's optimizer state (sync),
every trainer's optimizer state and stream position (local-sgd, async), the
epoch, the history, the early-stopping record and the config. Each trainer's
arrays go under ``trainers/<id>/opt/...``; its random-stream state (plain
ints) and position go into the JSON part.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from nnpipe import checkpoint as core


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
        Per shard: ``ShardTrainer.get_state()`` output (``opt`` arrays, ``pass_rng``, ``pos``, ``started``).
    meta : dict
        JSON-serialisable facts (mode, history, early stopping, config).
    """
    trainers = trainer_states or {}
    arrays = {
        "theta": theta, "best_theta": best_theta, "opt": opt_state or {},
        "trainers": {str(i): {"opt": s["opt"]} for i, s in trainers.items()},
    }
    streams = {str(i): {k: v for k, v in s.items() if k != "opt"} for i, s in trainers.items()}
    return core.save(directory, epoch, arrays, {**meta, "trainers": streams})


def load_latest(directory: str | os.PathLike | None) -> dict[str, Any] | None:
    """The newest checkpoint as one dict: ``theta``, ``best_theta``, ``opt_state``, ``trainer_states``, meta fields."""
    found = core.load_latest(directory)
    if found is None:
        return None
    arrays, meta = found
    streams = meta.pop("trainers", {})
    trainers = arrays.get("trainers", {})
    return {
        **meta,
        "theta": arrays["theta"],
        "best_theta": arrays.get("best_theta"),
        "opt_state": arrays.get("opt", {}),
        "trainer_states": {int(i): {**streams[i], "opt": trainers.get(i, {}).get("opt", {})} for i in streams},
    }
