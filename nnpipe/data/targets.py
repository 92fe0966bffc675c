"""Encoding targets for a head and mapping predictions back to the original labels."""

from __future__ import annotations

import numpy as np


def fit_classes(y: np.ndarray) -> np.ndarray:
    """Sorted distinct labels of ``y`` (ints, strings, ...): the label mapping."""
    return np.unique(np.asarray(y))


def encode_labels(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Class indices (n_samples,) for labels ``y``; raises on a label not in ``classes``."""
    y = np.asarray(y)
    idx = np.searchsorted(classes, y)
    idx = np.clip(idx, 0, len(classes) - 1)
    bad = classes[idx] != y
    if np.any(bad):
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"label {y[row]!r} at row {row} is not one of the known classes {classes.tolist()!r}"
        )
    return idx.astype(np.intp)


def encode_targets(y: np.ndarray, head: str, classes: np.ndarray | None, dtype: str) -> np.ndarray:
    """Targets in the form the head's loss expects (see :mod:`nnpipe.core.losses`)."""
    if head == "softmax":
        return encode_labels(y, classes)
    if head == "sigmoid":
        return encode_labels(y, classes).astype(dtype).reshape(-1, 1)
    Y = np.asarray(y, dtype=dtype)
    return Y.reshape(-1, 1) if Y.ndim == 1 else Y


def decode_predictions(P: np.ndarray, head: str, classes: np.ndarray | None) -> np.ndarray:
    """Original labels (classification) or values (regression) from head outputs ``P``."""
    if head == "softmax":
        return classes[P.argmax(axis=1)]
    if head == "sigmoid":
        return classes[(P[:, 0] > 0.5).astype(np.intp)]
    return P[:, 0] if P.shape[1] == 1 else P
