"""Metrics of a model on a source as sums and counts, combined on the driver.

Each piece (or in-memory shard) returns a handful of sums: loss, correct
rows and a confusion-count matrix for classification; squared and absolute
error and the target's sums for regression. :func:`combine` turns them into
exactly the metrics :func:`nnpipe.core.evaluation.evaluate_arrays` (validation, on
scaled targets) and :meth:`nnpipe.model.Model.evaluate` (test, in the
target's units) give on the same rows held in memory.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from nnpipe.core.network import Network, NetworkSpec
from nnpipe.sources.prep import PreparedSource, Runner, local_runner, piece_rows

CHUNK = 16384


def array_sums(net: Network, theta: np.ndarray, X: np.ndarray, Y: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Sums over scaled features ``X`` and encoded targets ``Y`` (any number of rows)."""
    task = net.head.task
    out: dict[str, Any] = {"n": len(X), "loss": 0.0}
    if task == "regression":
        out.update(sq=0.0, ab=0.0, size=0, sy=np.zeros(net.spec.n_outputs), syy=np.zeros(net.spec.n_outputs))
    else:
        out["confusion"] = np.zeros((n_classes, n_classes), dtype=np.int64)
    for start in range(0, len(X), CHUNK):
        Xc, Yc = X[start : start + CHUNK], Y[start : start + CHUNK]
        P = net.forward(theta, Xc)
        out["loss"] += net.head.loss(P, Yc) * len(Xc)
        if task == "regression":
            _add_regression(out, P, Yc)
        else:
            pred = P.argmax(axis=1) if task == "multiclass" else (P[:, 0] > 0.5).astype(np.intp)
            true = Yc.astype(np.intp) if task == "multiclass" else (Yc[:, 0] > 0.5).astype(np.intp)
            out["confusion"] += np.bincount(true * n_classes + pred, minlength=n_classes**2).reshape(
                n_classes, n_classes)
    return out


def _add_regression(out: dict[str, Any], P: np.ndarray, Y: np.ndarray) -> None:
    Y = np.asarray(Y, dtype=np.float64).reshape(P.shape)
    diff = P - Y
    out["sq"] += float(np.sum(diff * diff))
    out["ab"] += float(np.sum(np.abs(diff)))
    out["size"] += Y.size
    out["sy"] += Y.sum(axis=0)
    out["syy"] += (Y * Y).sum(axis=0)


def piece_sums(item: tuple, *, spec: dict, theta: np.ndarray, prep: dict, code: int, raw_units: bool,
               read: dict) -> dict[str, Any]:
    """Sums over one piece's rows of split ``code`` (runs where the piece is read)."""
    from nnpipe.model import Model

    piece, row0 = item
    X, y = piece_rows(piece, row0, code, **read)
    ns = NetworkSpec.from_dict(spec)
    model = Model(ns, theta, **prep)
    n_classes = 0 if model.classes is None else len(model.classes)
    if raw_units and model.task == "regression":
        out = {"n": len(X), "loss": 0.0, "sq": 0.0, "ab": 0.0, "size": 0, "sy": np.zeros(ns.n_outputs),
               "syy": np.zeros(ns.n_outputs)}
        for start in range(0, len(X), CHUNK):
            P = np.asarray(model.predict(X[start : start + CHUNK]), dtype=np.float64).reshape(-1, ns.n_outputs)
            _add_regression(out, P, y[start : start + CHUNK])
        return out
    return array_sums(model.net, model.theta, model.transform(X), model.encode_targets(y), n_classes)


def add_sums(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Elementwise total of :func:`array_sums` / :func:`piece_sums` results."""
    out = dict(parts[0])
    for p in parts[1:]:
        for k, v in p.items():
            out[k] = out[k] + v
    return out


def combine(sums: dict[str, Any], task: str, raw_units: bool = False) -> dict[str, float]:
    """Metrics from summed counts: ``loss`` and ``accuracy``, or ``mse``, ``mae``, ``r2`` (and ``loss``)."""
    n = sums["n"]
    if task == "regression":
        mse = sums["sq"] / sums["size"]
        var = float(np.sum(sums["syy"] - sums["sy"] ** 2 / n))
        out = {"loss": mse if raw_units else sums["loss"] / n, "mse": mse, "mae": sums["ab"] / sums["size"],
               "r2": 1.0 - sums["sq"] / var if var > 0 else 0.0}
        return {k: float(v) for k, v in out.items()}
    return {"loss": float(sums["loss"] / n), "accuracy": float(np.trace(sums["confusion"]) / n)}


def prep_fields(prepared: PreparedSource) -> dict[str, Any]:
    """What a worker needs to rebuild the servable model's scaler and label mapping."""
    return {"classes": prepared.classes, "mean": prepared.mean, "scale": prepared.scale,
            "feature_names": list(prepared.source.features), "target_mean": prepared.target_mean,
            "target_scale": prepared.target_scale}


def evaluate(prepared: PreparedSource, spec: NetworkSpec, theta: np.ndarray, code: int,
             run: Runner = local_runner, raw_units: bool = True) -> tuple[dict[str, float], np.ndarray | None]:
    """Metrics of ``theta`` on split ``code`` read piece by piece, and the confusion counts (classification).

    ``raw_units`` gives :meth:`Model.evaluate`'s metrics (test); otherwise
    :func:`evaluate_arrays`'s on scaled targets (validation).
    """
    pieces = [(p, int(r)) for p, r, c in zip(prepared.source.pieces, prepared.row0[:-1], prepared.counts[:, code])
              if c > 0]
    fn = partial(piece_sums, spec=spec.to_dict(), theta=np.asarray(theta), prep=prep_fields(prepared), code=code,
                 raw_units=raw_units, read=prepared.read_kwargs())
    sums = run(fn, pieces, reduce=add_sums)
    return combine(sums, prepared.task, raw_units), sums.get("confusion")
