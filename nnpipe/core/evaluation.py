"""Metrics of a network on arrays: loss and accuracy, or MSE/MAE/R², computed in chunks."""

from __future__ import annotations

import numpy as np

from nnpipe.core.network import Network, count_correct


def evaluate_arrays(
    net: Network, theta: np.ndarray, X: np.ndarray, Y: np.ndarray, chunk: int = 16384
) -> dict[str, float]:
    """Mean loss and accuracy (classification) or MSE/MAE/R² (regression), in chunks."""
    n = len(X)
    loss = 0.0
    correct = 0
    sq = ab = 0.0
    for start in range(0, n, chunk):
        Xc, Yc = X[start : start + chunk], Y[start : start + chunk]
        P = net.forward(theta, Xc)
        loss += net.head.loss(P, Yc) * len(Xc)
        if net.head.task == "regression":
            diff = P - Yc
            sq += float(np.sum(diff * diff))
            ab += float(np.sum(np.abs(diff)))
        else:
            correct += count_correct(net.head.task, P, Yc)
    out = {"loss": loss / n}
    if net.head.task == "regression":
        out["mse"] = sq / Y.size
        out["mae"] = ab / Y.size
        var = float(np.sum((Y - Y.mean(axis=0)) ** 2))
        out["r2"] = 1.0 - sq / var if var > 0 else 0.0
    else:
        out["accuracy"] = correct / n
    return out
