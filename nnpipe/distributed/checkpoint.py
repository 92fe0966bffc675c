"""What a distributed loop adds to a checkpoint (saved by :mod:`nnpipe.reporting`, no pickle).

Besides the global parameters and the early-stopping record that every loop
saves, a distributed checkpoint holds the driver's optimizer state (sync) and
every trainer's optimizer state and stream position (local-sgd, async). Each
trainer's arrays go under ``trainers/<id>/opt/...``; its random-stream state
(plain ints) and position go into the JSON part.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def pack(opt_state: dict[str, np.ndarray] | None,
         trainer_states: dict[int, dict[str, Any]] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(arrays, meta)`` for :meth:`nnpipe.reporting.Reporter.end_epoch`.

    Parameters
    ----------
    opt_state : dict of ndarray, optional
        The driver's optimizer state (``sync``).
    trainer_states : dict of int to dict, optional
        Per shard: ``ShardTrainer.get_state()`` output (``opt`` arrays, ``pass_rng``, ``pos``, ``started``).
    """
    trainers = trainer_states or {}
    arrays = {"opt": opt_state or {}, "trainers": {str(i): {"opt": s["opt"]} for i, s in trainers.items()}}
    meta = {"trainers": {str(i): {k: v for k, v in s.items() if k != "opt"} for i, s in trainers.items()}}
    return arrays, meta


def unpack(arrays: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """A loaded checkpoint as one dict: ``theta``, ``opt_state``, ``trainer_states`` and the meta fields."""
    streams = meta.get("trainers", {})
    trainers = arrays.get("trainers", {})
    return {
        **meta,
        "theta": arrays["theta"],
        "best_theta": arrays.get("best_theta"),
        "opt_state": arrays.get("opt", {}),
        "trainer_states": {int(i): {**streams[i], "opt": trainers.get(i, {}).get("opt", {})} for i in streams},
    }
