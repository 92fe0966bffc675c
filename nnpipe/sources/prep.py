"""Validating, splitting, scaling and evaluating a large source piece by piece.

Every function here that takes a :class:`~nnpipe.sources.Piece` runs where
the piece is read (a Dask worker, or this process in ``single`` mode) and
returns a few numbers; :func:`prepare` and :func:`evaluate` combine them. A
*runner* does the mapping: ``run(fn, items, reduce=None)`` returns
``[fn(x) for x in items]`` or ``reduce`` of that list. :func:`local_runner`
maps in this process; ``nnpipe.distributed.frames.cluster_runner`` maps on
the workers and reduces there, so only the combined result reaches the driver.

The split is a seeded hash of each row's *global* position (files in sorted
order, rows in file order): row ``i`` goes to test when ``u(i) < test_size``,
to validation when ``u(i) < test_size + val_size``, else to training, where
``u`` is a SplitMix64 hash of ``i`` and the seed mapped to [0, 1). It does not
depend on pieces, block sizes or workers. Unlike the in-memory split it is not
stratified: with millions of rows each part gets each class's share anyway.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterator

import numpy as np

from nnpipe.core.network import NetworkSpec
from nnpipe.data.load import DataError
from nnpipe.sources.location import Piece, Source, iter_columns

log = logging.getLogger("nnpipe")

TRAIN, VAL, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "val", "test")
MAX_CLASSES = 10_000  # more distinct integral targets than this: treated as regression

Runner = Callable[..., Any]


def local_runner(fn: Callable, items: list, reduce: Callable | None = None) -> Any:
    """Map ``fn`` over ``items`` in this process (``single`` mode)."""
    out = [fn(x) for x in items]
    return reduce(out) if reduce is not None else out


# ---------------------------------------------------------------- the split

_U64 = np.uint64


def _mix64(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
        return z ^ (z >> _U64(31))


def split_codes(row0: int, n: int, seed: int, test_size: float, val_size: float) -> np.ndarray:
    """Split of global rows ``row0 .. row0 + n - 1``: ``TRAIN`` (0), ``VAL`` (1) or ``TEST`` (2), uint8."""
    with np.errstate(over="ignore"):
        key = _mix64(np.array([seed], dtype=np.uint64) + _U64(0x9E3779B97F4A7C15))[0]
        z = _mix64(np.arange(row0, row0 + n, dtype=np.uint64) ^ key)
    u = (z >> _U64(11)).astype(np.float64) * (1.0 / (1 << 53))
    codes = np.full(n, TRAIN, dtype=np.uint8)
    codes[u < test_size + val_size] = VAL
    codes[u < test_size] = TEST
    return codes


# ---------------------------------------------------------------- on the workers

def scan_piece(item: tuple[Piece, int | None], *, features: list[str], target: str, columns: list[str],
               storage_options: dict, seed: int = 0, test_size: float = 0.2, val_size: float = 0.1) -> dict[str, Any]:
    """Check one piece and, given its first global row, reduce its statistics, in one read.

    ``item`` is ``(piece, row0)``. Always: the row count, the first bad value
    (piece-relative row) and the distinct labels (``integral`` false past
    :data:`MAX_CLASSES` or for non-integral numbers). With ``row0`` (not None)
    also, for the split that row numbering gives: ``counts`` per split, the
    training rows' feature moments ``x`` (count, mean, sum of squared
    deviations), the target's ``y`` (a numeric target) and ``train_labels``.

    Read column by column in batches (:func:`~nnpipe.sources.location.iter_columns`):
    a whole 1M-row group as a table, a frame and a float64 copy held a worker
    near 1 GB to check a 56 MB shard. The first bad value is the target's first
    empty row, else the first feature column's first bad row.
    """
    piece, row0 = item
    out: dict[str, Any] = {"rows": 0, "error": None, "labels": None, "integral": True}
    labels: np.ndarray | None = None
    keep: np.ndarray | None = None
    xs: list[tuple[int, np.ndarray, np.ndarray]] = []
    train_labels: list[np.ndarray] = []
    for col, batches in iter_columns(piece, [target, *features], storage_options, columns):
        at, parts = 0, [_moments(np.empty((0, 1)))]
        if col == target:  # whole (one column): its length is the piece's rows, which the split needs
            batches = list(batches)
            if row0 is not None:
                codes = split_codes(row0, sum(len(s) for s in batches), seed, test_size, val_size)
                keep = codes == TRAIN
                out["counts"] = np.bincount(codes, minlength=3).tolist()
        for s in batches:
            if col == target:
                missing = s.isna().to_numpy()
                if missing.any():
                    out["error"] = {"column": target, "row": at + int(np.flatnonzero(missing)[0]), "what": "target"}
                    return out
                y = _labels(s)
                labels = _collect_labels(labels, y, out)
                if keep is not None and out["integral"]:
                    train_labels.append(np.unique(_kept(keep, y, at)))
                if keep is not None and y.dtype.kind in "fiub":
                    parts.append(_moments(_kept(keep, y.astype(np.float64), at).reshape(-1, 1)))
            else:
                values, error = _feature_values(s)
                if error is not None:
                    out["error"] = {"column": col, **error, "row": at + error["row"]}
                    return out
                if keep is not None:
                    parts.append(_moments(_kept(keep, values, at).reshape(-1, 1)))
            at += len(s)
        out["rows"] = at
        if keep is not None and col == target:
            numeric = all(s.dtype.kind in "fiub" for s in batches)
            out["y"] = merge_moments(parts) if numeric else None  # a text target has no moments
        elif keep is not None:
            xs.append(merge_moments(parts))
    if out["integral"]:
        out["labels"] = labels if labels is not None else np.empty(0)
    if keep is not None:
        out["x"] = (xs[0][0], np.concatenate([m[1] for m in xs]), np.concatenate([m[2] for m in xs]))
        out["train_labels"] = np.unique(np.concatenate(train_labels)) if train_labels else None
    return out


def _feature_values(s: Any) -> tuple[np.ndarray, dict[str, Any] | None]:
    """A feature batch as float64, and its first value that is not a finite number (batch row), or None."""
    import pandas as pd

    values = s.to_numpy(dtype=np.float64) if s.dtype.kind in "fiub" else None
    if values is not None and np.isfinite(values).all():  # the common case, without pandas' conversion
        return values, None
    values = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    not_number = np.isnan(values) & s.notna().to_numpy()
    bad = not_number | ~np.isfinite(values)
    if not bad.any():
        return values, None
    i = int(np.flatnonzero(bad)[0])
    what = "number" if not_number[i] else ("nan" if np.isnan(values[i]) else "inf")
    return values, {"row": i, "what": what, "value": repr(s.iloc[i]) if what == "number" else repr(float(values[i]))}


def _collect_labels(labels: np.ndarray | None, y: np.ndarray, out: dict[str, Any]) -> np.ndarray | None:
    """``labels`` with the distinct values of ``y`` added; None (and ``out["integral"]`` false) past a classifier's."""
    if not out["integral"]:
        return None
    if y.dtype.kind == "f" and not np.all(np.mod(y, 1) == 0):
        out["integral"] = False
        return None
    labels = np.unique(y) if labels is None else np.union1d(labels, y)
    if len(labels) > MAX_CLASSES:
        out["integral"] = False
        return None
    return labels


def _labels(series) -> np.ndarray:
    y = series.to_numpy()
    return y.astype(str) if y.dtype.kind in "OUS" else y


def piece_rows(piece: Piece, row0: int, code: int | None, *, features: list[str], target: str, columns: list[str],
               storage_options: dict, seed: int, test_size: float, val_size: float,
               span: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Raw features (float64, column-major) and labels of this piece's rows in split ``code`` (None: all rows).

    ``span = (a, b)`` keeps only rows ``a:b`` of those (a shard's segment of
    the piece). Read column by column in batches
    (:func:`~nnpipe.sources.location.iter_columns`) into one preallocated
    array of the kept rows: only those rows ever exist in float64, never the
    whole piece (a 1M-row group cost a worker ~700 MB of temporaries on top
    of its shard, then 224 MB for the 700k training rows of which its shard
    took half).
    """
    X = np.empty((0, len(features)))
    y = np.empty(0)
    keep: np.ndarray | None = None
    for j, (col, batches) in enumerate(iter_columns(piece, [target, *features], storage_options, columns)):
        if j == 0:  # the target: the piece's row count, then which rows are kept
            raw = list(batches)
            n = sum(len(s) for s in raw)
            if piece.rows is not None and n != piece.rows:
                raise DataError(f"{piece.path}: read {n} rows where the metadata says {piece.rows}")
            keep = _keep_mask(n, None if code is None else split_codes(row0, n, seed, test_size, val_size) == code,
                              span)
            kept = [_kept(keep, _labels(s), at) for s, at in _with_offsets(iter(raw))]
            y = np.concatenate(kept) if kept else y
            # Column-major: each column is written contiguously (row-major, every value of a column
            # landed on its own cache line: piece_rows ran at half the speed of a whole-piece read).
            X = np.empty((len(y), len(features)), dtype=np.float64, order="F")
            continue
        filled = 0
        for s, at in _with_offsets(batches):
            v = _kept(keep, s.to_numpy(dtype=np.float64), at)
            X[filled : filled + len(v), j - 1] = v
            filled += len(v)
    return X, y


def _keep_mask(n: int, in_split: np.ndarray | None, span: tuple[int, int] | None) -> np.ndarray | None:
    """Rows to keep of ``n``: those ``in_split`` (all if None), then only ``span`` of them; None keeps all."""
    if span is None:
        return in_split
    rows = np.arange(n) if in_split is None else np.flatnonzero(in_split)
    keep = np.zeros(n, dtype=bool)
    keep[rows[span[0] : span[1]]] = True
    return keep


def _with_offsets(batches: Iterator[Any]) -> Iterator[tuple[Any, int]]:
    at = 0
    for s in batches:
        yield s, at
        at += len(s)


def _kept(keep: np.ndarray | None, values: np.ndarray, at: int) -> np.ndarray:
    """The rows of batch ``values`` (starting at piece row ``at``) that ``keep`` keeps (all without a mask)."""
    return values if keep is None else values[keep[at : at + len(values)]]


def _moments(X: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    n = len(X)
    if n == 0:
        return 0, np.zeros(X.shape[1]), np.zeros(X.shape[1])
    mean = X.mean(axis=0)
    return n, mean, ((X - mean) ** 2).sum(axis=0)


def merge_moments(parts: list[tuple[int, np.ndarray, np.ndarray]]) -> tuple[int, np.ndarray, np.ndarray]:
    """Chan et al.'s pairwise combination of (count, mean, M2): exact up to rounding."""
    n, mean, m2 = parts[0]
    for nb, mb, m2b in parts[1:]:
        if nb == 0:
            continue
        tot = n + nb
        delta = mb - mean
        mean = mean + delta * (nb / tot)
        m2 = m2 + m2b + delta**2 * (n * nb / tot)
        n = tot
    return n, mean, m2


def merge_stats(results: list[dict[str, Any]], regression: bool) -> dict[str, Any]:
    """The reduction of :func:`scan_piece` results made with ``row0`` (on a worker for a cluster runner)."""
    out: dict[str, Any] = {"counts": [r["counts"] for r in results], "x": merge_moments([r["x"] for r in results])}
    if regression:
        out["y"] = merge_moments([r["y"] for r in results])
    else:
        out["labels"] = np.unique(np.concatenate([r["train_labels"] for r in results]))
    return out


# ---------------------------------------------------------------- on the driver

@dataclass
class PreparedSource:
    """A validated source with its split, statistics and label mapping (all small).

    Attributes
    ----------
    source : Source
    task : str
    classes : ndarray or None
    mean, scale : ndarray of shape (n_features,)
        Training rows' mean and population standard deviation (0 replaced by 1), as StandardScaler.
    target_mean, target_scale : ndarray or None
        Regression: training targets' statistics.
    row0 : ndarray of shape (n_pieces + 1,)
        Global first row of each piece (and the total).
    counts : ndarray of shape (n_pieces, 3)
        Rows of each piece in train, val, test.
    seed, test_size, val_size
        The split.
    """

    source: Source
    task: str
    classes: np.ndarray | None
    mean: np.ndarray
    scale: np.ndarray
    target_mean: np.ndarray | None
    target_scale: np.ndarray | None
    row0: np.ndarray
    counts: np.ndarray
    seed: int
    test_size: float
    val_size: float
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        return int(self.row0[-1])

    def rows(self, code: int) -> int:
        return int(self.counts[:, code].sum())

    def read_kwargs(self) -> dict[str, Any]:
        s = self.source
        return {"features": s.features, "target": s.target, "columns": s.columns,
                "storage_options": s.storage_options, "seed": self.seed, "test_size": self.test_size,
                "val_size": self.val_size}

    def segments(self, code: int, lo: int, hi: int) -> list[tuple[Piece, int, int, int]]:
        """Rows ``[lo, hi)`` of split ``code`` (in global order) as ``(piece, row0, a, b)``.

        ``a:b`` indexes the piece's rows of that split.
        """
        out = []
        ends = np.cumsum(self.counts[:, code])
        starts = ends - self.counts[:, code]
        for k, piece in enumerate(self.source.pieces):
            a, b = max(lo - starts[k], 0), min(hi - starts[k], self.counts[k, code])
            if b > a:
                out.append((piece, int(self.row0[k]), int(a), int(b)))
        return out

    def model(self, spec: NetworkSpec, theta: np.ndarray | None = None, metadata: dict | None = None):
        """The servable model (raw features in, original labels out)."""
        from nnpipe.model import Model

        theta = np.zeros(spec.n_params, dtype=spec.dtype) if theta is None else theta
        return Model(spec, theta, classes=self.classes, mean=self.mean, scale=self.scale,
                     feature_names=list(self.source.features), metadata=metadata,
                     target_mean=self.target_mean, target_scale=self.target_scale)


def _bad_value_message(source: Source, piece: Piece, file_row: int, err: dict[str, Any]) -> str:
    r = file_row + err["row"]
    where = f"row {r + 1} (line {r + 2})" if piece.fmt == "csv" else f"row {r + 1}"
    col = err["column"]
    if err["what"] == "target":
        return f"{piece.path}: target column {col!r} {where} is empty"
    if err["what"] == "number":
        return f"{piece.path}: column {col!r} {where}: value {err['value']} is not a number"
    what = "is missing (NaN)" if err["what"] == "nan" else f"is infinite ({err['value']})"
    return f"{piece.path}: column {col!r} {where} {what}; only finite numbers can be trained on"


def prepare(source: Source, run: Runner = local_runner, *, seed: int = 0, test_size: float = 0.2,
            val_size: float = 0.1, task: str | None = None) -> PreparedSource:
    """Validate every piece, split, and reduce the scaler statistics and the class list.

    Raises
    ------
    DataError
        The first bad value in global order (file, column, row within the file,
        value), a single class, or a split part left empty.
    """
    pieces = source.pieces
    kw = {"features": source.features, "target": source.target, "columns": source.columns,
          "storage_options": source.storage_options}
    read = {**kw, "seed": seed, "test_size": test_size, "val_size": val_size}
    # The split hashes each row's global position. Where the metadata gives every piece's rows
    # (Parquet), positions are known before reading: one read checks a piece and reduces its
    # statistics. Otherwise (CSV) the checks count the rows, and a second read reduces.
    known = all(p.rows is not None for p in pieces)
    starts = np.cumsum([0, *(p.rows for p in pieces[:-1])]).tolist() if known else [None] * len(pieces)
    checks = run(partial(scan_piece, **read), list(zip(pieces, starts)))
    file_row: dict[str, int] = {}
    for piece, chk in zip(pieces, checks):
        start = file_row.get(piece.url, 0)
        if chk["error"] is not None:
            raise DataError(_bad_value_message(source, piece, start, chk["error"]))
        if known and chk["rows"] != piece.rows:
            raise DataError(f"{piece.path}: read {chk['rows']} rows where the metadata says {piece.rows}")
        file_row[piece.url] = start + chk["rows"]
    rows = np.array([c["rows"] for c in checks], dtype=np.int64)
    if rows.sum() == 0:
        raise DataError(f"{source.location}: no data rows")
    if task is None or task == "classification":
        if task is None and not all(c["integral"] for c in checks):
            task = "regression"
        else:
            n_classes = len(np.unique(np.concatenate([c["labels"] for c in checks])))
            task = "binary" if n_classes == 2 else "multiclass"
    classes = None
    if task != "regression":
        if any(c["labels"] is None for c in checks):
            raise DataError(f"{source.location}: target {source.target!r} has non-integral or more than "
                            f"{MAX_CLASSES} distinct values; use --task regression")
        classes = np.unique(np.concatenate([c["labels"] for c in checks]))
        if len(classes) < 2:
            raise DataError(f"{source.location}: target column {source.target!r} has a single class "
                            f"{classes.tolist()!r}; need at least 2 to train a classifier")
    row0 = np.concatenate([[0], np.cumsum(rows)])
    regression = task == "regression"
    if not known:
        checks = run(partial(scan_piece, **read), list(zip(pieces, row0[:-1].tolist())))
    if regression and any(c["y"] is None for c in checks):
        raise DataError(f"{source.location}: target {source.target!r} holds text; a regression needs numbers")
    stats = merge_stats(checks, regression)
    counts = np.array(stats["counts"], dtype=np.int64)
    for code, name in enumerate(SPLIT_NAMES):
        size = (1 - test_size - val_size, val_size, test_size)[code]
        if size > 0 and counts[:, code].sum() == 0:
            raise DataError(f"{source.location}: {rows.sum()} rows leave the {name} part empty; "
                            f"need more rows or a larger {name} fraction")
    n, mean, m2 = stats["x"]
    scale = np.sqrt(m2 / n)
    scale[scale == 0] = 1.0  # a constant column: centred, not divided by zero (as StandardScaler)
    target_mean = target_scale = None
    if task == "regression":
        ny, ym, ym2 = stats["y"]
        target_mean, target_scale = ym, np.sqrt(ym2 / ny)
        target_scale[target_scale == 0] = 1.0
    elif len(stats["labels"]) < len(classes):
        lost = sorted(set(classes.tolist()) - set(stats["labels"].tolist()))
        raise DataError(f"{source.location}: class {lost[0]!r} of target {source.target!r} has no training rows")
    source.n_rows = int(row0[-1])
    prepared = PreparedSource(source, task, classes, mean, scale, target_mean, target_scale, row0, counts,
                              seed, test_size, val_size)
    log.info("source %s: %d rows in %d pieces; train %d, val %d, test %d; task %s", source.location,
             prepared.n_rows, len(pieces), prepared.rows(TRAIN), prepared.rows(VAL), prepared.rows(TEST), task)
    return prepared
