"""Checks of arrays handed to the API (``nnpipe.train``, ``Sequential.fit``, ``Model.predict``).

Each error is one line naming the argument, the column and the row, instead
of a raw numpy broadcasting error or an IndexError from deep in training.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def check_features(X: Any, name: str = "X", n_features: int | None = None, columns: list[str] | None = None,
                   dtype: Any = np.float64, allow_1d: bool = False) -> np.ndarray:
    """``X`` as a finite 2-D float array of ``n_features`` columns; ValueError naming column and row.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
    name : str
        The argument's name in messages.
    n_features : int, optional
        Required number of columns.
    columns : list of str, optional
        Column names, for messages.
    allow_1d : bool
        Treat a 1-D array as a single row.
    """
    raw = np.asarray(X) if not isinstance(X, np.ndarray) else X
    if raw.dtype.kind == "c":  # a complex value would silently lose its imaginary part
        flat = np.argwhere(raw.imag != 0) if raw.ndim else np.empty((0, 0), int)
        at = tuple(int(i) for i in (flat[0] if len(flat) else np.zeros(raw.ndim, int)))
        where = f" column {at[-1]} row {at[0]}" if raw.ndim == 2 else ""
        raise ValueError(f"{name}{where} is {raw[at].item()!r}, not a real number")
    try:
        arr = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric: {str(exc).splitlines()[0]}") from None
    if arr.ndim == 1 and allow_1d:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {arr.shape}")
    if n_features is not None and arr.shape[1] != n_features:
        raise ValueError(f"{name} has {arr.shape[1]} columns, expected {n_features}"
                         + (f" ({columns})" if columns and len(columns) <= 20 else ""))
    bad = ~np.isfinite(arr)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        label = repr(columns[col]) if columns and col < len(columns) else str(col)
        what = "NaN" if np.isnan(arr[row, col]) else repr(float(arr[row, col]))
        raise ValueError(f"{name} column {label} row {row} is {what}; only finite numbers are accepted")
    return arr.astype(dtype, copy=False)


def check_lengths(**arrays: Any) -> int:
    """The common length of the named arrays; ValueError naming both if two differ."""
    lengths = {k: len(v) for k, v in arrays.items() if v is not None}
    items = list(lengths.items())
    for k, n in items[1:]:
        if n != items[0][1]:
            raise ValueError(f"{items[0][0]} has {items[0][1]} rows but {k} has {n}; they must match")
    return items[0][1] if items else 0


def aligned(a: np.ndarray, dtype: np.dtype | str | None = None) -> np.ndarray:
    """``a`` as a C-contiguous, aligned array (copied only when it is not one already).

    Arrays that arrive over the network are often views at an odd offset
    into the message buffer (Dask packs frames back to back; a shard scattered
    from the driver or moved between workers after a loss arrived 2 bytes
    off). ``np.take`` on such an array copies the whole of it on every call:
    a 256-row batch from a 224 MB shard took 45 ms instead of 4 us.
    ``np.ascontiguousarray`` keeps the odd offset; ``np.require`` does not.
    """
    return np.require(a, dtype=dtype, requirements=("C", "A"))
