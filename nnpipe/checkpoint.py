"""Checkpoints: one ``ckpt-<epoch>.npz`` per saved epoch in a directory, no pickle.

A checkpoint is a nested dict of arrays (parameters, optimizer states, ...)
stored under ``/``-joined keys, plus a JSON document for everything else
(epoch, history, early-stopping record, random-generator states, config).
Files are written to a temporary name and renamed, so a crash never leaves a
torn one, and they load with ``allow_pickle=False``, so a checkpoint fetched
from an artefact store cannot run code. :func:`load_latest` reads the newest.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

_NAME = re.compile(r"^ckpt-(\d{6})\.npz$")
_META = "__meta__"


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if "/" in str(key) or name == _META:
            raise ValueError(f"checkpoint key {name!r} may not contain '/' or be {_META!r}")
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "/"))
        elif value is not None:
            flat[name] = np.asarray(value)
    return flat


def _unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def save(directory: str | os.PathLike, epoch: int, arrays: Mapping[str, Any], meta: Mapping[str, Any]) -> Path:
    """Write ``ckpt-<epoch>.npz`` into ``directory`` and return its path.

    Parameters
    ----------
    epoch : int
        The last completed epoch (or round).
    arrays : mapping
        Nested mapping whose leaves are arrays (``None`` leaves are skipped).
    meta : mapping
        JSON-serialisable facts; ``epoch`` is added.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    flat = _flatten(arrays)
    flat[_META] = np.frombuffer(json.dumps({**meta, "epoch": int(epoch)}).encode(), dtype=np.uint8)
    path = directory / f"ckpt-{epoch:06d}.npz"
    tmp = directory / f".ckpt-{epoch:06d}.tmp.npz"
    np.savez(tmp, **flat)
    os.replace(tmp, path)
    return path


def is_checkpoint_name(name: str) -> bool:
    """Whether a file name is one :func:`save` writes (``ckpt-000009.npz``)."""
    return bool(_NAME.match(name))


def load(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a checkpoint written by :func:`save`: ``(arrays, meta)``.

    Raises
    ------
    ValueError
        ``<path>: cannot be read as a checkpoint (...)``: a truncated or foreign file, named.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z[_META]).decode())
            arrays = _unflatten({k: z[k].copy() for k in z.files if k != _META})
        if "theta" not in arrays:
            raise KeyError("theta")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0]}" if str(exc) else type(exc).__name__
        raise ValueError(f"{path}: cannot be read as a checkpoint, truncated or not one ({reason})") from None
    return arrays, {**meta, "path": str(path)}


def latest_path(directory: str | os.PathLike | None) -> Path | None:
    """The newest checkpoint in ``directory`` (None if there is none)."""
    if directory is None or not Path(directory).is_dir():
        return None
    found = sorted(p for p in Path(directory).iterdir() if _NAME.match(p.name))
    return found[-1] if found else None


def load_latest(directory: str | os.PathLike | None) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """:func:`load` of the newest checkpoint in ``directory``, or None."""
    path = latest_path(directory)
    return None if path is None else load(path)
