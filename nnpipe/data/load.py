"""Loading, validating, splitting and scaling data at the boundary.

Sources are scikit-learn's built-in datasets by name or CSV/Parquet files with
a named target column. Every error is a :class:`DataError` that names the
file, column and row (and quotes the bad value), raised before anything is
trained, logged or registered. Splitting and scaling are scikit-learn's; the
scaler is fitted on the training part only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from nnpipe.data.builtin import LOADERS, load_bundle

BUILTIN: dict[str, str] = LOADERS  # built-in dataset name -> scikit-learn loader
TASKS = ("multiclass", "binary", "regression", "classification")
# Said wherever a numeric target was taken as classes: how to predict it as a quantity instead.
REGRESSION_HINT = "if the target is a quantity to predict, pass --task regression (task = \"regression\" in a config file)"
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", "": "csv"}
# Largest |value| accepted. Beyond it the scaler's variance (a sum of squares)
# overflows float64 on realistic row counts and training "diverges" for no
# reason the user can see; 1e100 leaves room for any physical quantity or a
# nanosecond timestamp (~1e18).
MAX_ABS_VALUE = 1e100


class DataError(ValueError):
    """Bad input data; the message names the source, column and row."""


@dataclass
class Dataset:
    """Features and target as loaded and validated.

    Attributes
    ----------
    name : str
        Built-in name or file stem.
    source : str
        Built-in name or the file path as given.
    X : ndarray of shape (n_samples, n_features), float64
    y : ndarray of shape (n_samples,)
        Original labels (classification) or values (regression).
    feature_names : list of str
    target : str
    task : str
        ``multiclass``, ``binary`` or ``regression``.
    content_hash : str
        SHA-256 of the file bytes (or of the arrays for a built-in dataset).
    warnings : list of str
        Problems worth telling the user that did not stop the load.
    notes : list of str
        What the load did that the user should hear (how much a folder of parts read into memory).
    class_names : list of str, optional
        Readable names of the classes in label order (built-in datasets only).
    """

    name: str
    source: str
    X: np.ndarray
    y: np.ndarray
    feature_names: list[str]
    target: str
    task: str
    content_hash: str
    warnings: list[str] = field(default_factory=list)
    class_names: list[str] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def classes(self) -> np.ndarray | None:
        return None if self.task == "regression" else np.unique(self.y)


@dataclass
class Splits:
    """Train / validation / test parts, features standardised with training statistics."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    classes: np.ndarray | None
    task: str
    feature_names: list[str] = field(default_factory=list)
    raw_test: np.ndarray | None = None  # unscaled test features, for serving checks
    # Regression targets are standardised too (training statistics), and mapped back on predict.
    target_mean: np.ndarray | None = None
    target_scale: np.ndarray | None = None

    def scaled(self, X: np.ndarray) -> np.ndarray:
        return (X - self.mean) / self.scale


def infer_task(y: np.ndarray) -> str:
    """``regression`` for non-integral numbers, else ``binary`` or ``multiclass`` by class count."""
    if y.dtype.kind == "f" and not np.all(np.mod(y, 1) == 0):
        return "regression"
    return "binary" if len(np.unique(y)) == 2 else "multiclass"


def load_dataset(source: str | Path, target: str | None = None, task: str | None = None,
                 features: list[str] | None = None) -> Dataset:
    """Load a built-in dataset by name or a CSV/Parquet file with a target column.

    Parameters
    ----------
    source : str or Path
        ``iris``, ``wine``, ``breast_cancer``, ``digits``, ``diabetes``, or a
        ``.csv`` / ``.parquet`` path.
    target : str, optional
        Target column (required for files).
    task : str, optional
        Override the inferred task.
    features : list of str, optional
        Feature columns of a file (default: every column but the target).

    Raises
    ------
    DataError
        Missing or empty file, unsupported format, duplicate column names,
        unknown target column, non-numeric, non-finite or overflow-sized
        feature, every feature constant, missing target value.

    Notes
    -----
    Some (not all) constant feature columns are kept: they scale to zero and
    carry no signal, and dropping them would change the columns the served
    model expects. They are named in ``Dataset.warnings`` (the pipeline logs
    them to the run). A dataset whose features are *all* constant is refused.
    """
    if task is not None and task not in TASKS:
        raise DataError(f"task must be one of {TASKS}, got {task!r}")
    src = str(source)
    check_source(src, target)
    if src in BUILTIN:
        if features:
            raise DataError(f"{src}: features={features!r} select columns of a file; built-in datasets use all")
        ds = _load_builtin(src)
    elif is_parts(src):
        raise DataError(f"{src}: a folder or glob of parts; read it with nnpipe.sources.load_parts "
                        "(nnpipe train --in-memory does)")
    else:
        ds = _load_file(Path(src), str(target), features)
    return apply_task(ds, task)


def apply_task(ds: Dataset, task: str | None) -> Dataset:
    """Set ``ds.task`` from ``task`` (``classification`` picks binary or multiclass), or keep the inferred one.

    Raises
    ------
    DataError
        A classification target with a single class.
    """
    if task == "classification":
        ds.task = "binary" if len(np.unique(ds.y)) == 2 else "multiclass"
    elif task is not None:
        ds.task = task
    elif ds.source not in BUILTIN and ds.task == "multiclass" and ds.y.dtype.kind in "iuf" and len(np.unique(ds.y)) > 5:
        # whole numbers with several values: a count or a score may be meant as a quantity
        ds.warnings.append(f"target column {ds.target!r} holds {len(np.unique(ds.y))} whole-number values, "
                           f"trained as classes; {REGRESSION_HINT}")
    if ds.task != "regression" and len(np.unique(ds.y)) < 2:
        raise DataError(
            f"{ds.source}: target column {ds.target!r} has a single class {np.unique(ds.y).tolist()!r}; "
            "need at least 2 to train a classifier"
        )
    return ds


def is_parts(source: str) -> bool:
    """A local folder or a glob: several files read as one table (not a URL, not a built-in name)."""
    import glob
    import os

    return "://" not in source and source not in BUILTIN and (os.path.isdir(source) or glob.has_magic(source))


def check_source(source: str | Path, target: str | None = None) -> list[str]:
    """Cheap checks of a source before anything expensive starts; returns the feature column names.

    A built-in name passes. A file must exist, be non-empty, have a supported
    extension, and a header with unique column names that include ``target``
    and at least one feature. Only the header is read.

    Raises
    ------
    DataError
    """
    src = str(source)
    if src in BUILTIN:
        return []
    if is_parts(src):  # parts are checked when listed (nnpipe.data.parts): names, schemas, sizes
        if not target:
            raise DataError(f"{src}: a target column is required for a file source (--target COLUMN)")
        return []
    path = Path(src)
    suffix = path.suffix.lower()
    if suffix not in FORMATS and (path.exists() or suffix in _KNOWN_OTHER):
        raise DataError(
            f"{src}: unsupported format {suffix!r}; nnpipe reads .csv and .parquet/.pq files"
            + (" (save the sheet as CSV)" if suffix in (".xlsx", ".xls", ".ods") else "")
        )
    if not path.exists():
        if suffix in FORMATS and suffix:
            raise DataError(f"{src}: file not found")
        raise DataError(
            f"unknown dataset {src!r}: expected a built-in name {sorted(BUILTIN)} or a .csv/.parquet file"
        )
    if not path.is_file():
        raise DataError(f"{src}: not a file")
    if path.stat().st_size == 0:
        raise DataError(f"{src}: file is empty")
    if not target:
        raise DataError(f"{src}: a target column is required for a file source (--target COLUMN)")
    names = _header(path)
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise DataError(f"{src}: duplicate column name {name!r} (column {i + 1}); column names must be unique")
        seen.add(name)
    if target not in seen:
        raise DataError(f"{src}: target column {target!r} not found; columns are {names}")
    features = [n for n in names if n != target]
    if not features:
        raise DataError(f"{src}: no feature columns besides the target {target!r}")
    return features


# extensions people try that nnpipe does not read (named even when the file is missing)
_KNOWN_OTHER = (".xlsx", ".xls", ".ods", ".json", ".jsonl", ".txt", ".tsv", ".feather", ".arrow", ".h5",
                ".hdf5", ".npy", ".npz", ".pkl", ".pickle", ".zip", ".gz", ".xml", ".sav", ".dta")


def _header(path: Path) -> list[str]:
    """The column names as written in the file (pandas would silently rename duplicates)."""
    if FORMATS[path.suffix.lower()] == "parquet":
        try:
            import pyarrow.parquet as pq

            return [str(n) for n in pq.read_schema(path).names if not str(n).startswith("__index_level_")]
        except Exception as exc:
            raise DataError(f"{path}: cannot be read as Parquet: {str(exc).splitlines()[0]}") from exc
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            row = next(csv.reader(fh), None)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text CSV file ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise DataError(f"{path}: cannot be read as CSV: {exc}") from None
    if not row or not any(c.strip() for c in row):
        raise DataError(f"{path}: file is empty (no header and no rows)")
    return [c.strip() if c.strip() else f"Unnamed: {i}" for i, c in enumerate(row)]


def _load_builtin(name: str) -> Dataset:
    b = load_bundle(name)
    digest = hashlib.sha256(b.X.tobytes() + b.y.tobytes()).hexdigest()
    task = "regression" if name == "diabetes" else infer_task(b.y)
    return Dataset(name, name, b.X, b.y, b.feature_names, "target", task, digest, class_names=b.class_names)


def _read_frame(path: Path):
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if FORMATS[suffix] == "parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty (no header and no rows)") from None
    except Exception as exc:  # the parser's own message says what and where
        raise DataError(f"{path}: cannot be read as {suffix or 'CSV'}: {exc}") from exc


def _load_file(path: Path, target: str, only: list[str] | None = None) -> Dataset:
    frame = _read_frame(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return dataset_from_frame(frame, str(path), path.stem, target, only, digest, csv=path.suffix.lower() == ".csv")


def dataset_from_frame(frame, src: str, name: str, target: str, only: list[str] | None, digest: str,
                       csv: bool = False) -> Dataset:
    """A validated :class:`Dataset` from a frame read from ``src`` (a file, or the parts of a folder).

    ``csv``: report rows with their file line too (one header line above them).
    """
    if len(frame) == 0:
        raise DataError(f"{src}: file has a header but no data rows")
    if target not in frame.columns:
        raise DataError(f"{src}: target column {target!r} not found; columns are {list(map(str, frame.columns))}")
    features = [c for c in frame.columns if c != target]
    if only:
        missing = [c for c in only if c not in frame.columns or c == target]
        if missing:
            raise DataError(f"{src}: feature column {missing[0]!r} not found (or is the target); "
                            f"columns are {list(map(str, frame.columns))}")
        features = list(only)
    if not features:
        raise DataError(f"{src}: no feature columns besides the target {target!r}")
    # CSV rows are reported as 1-based data rows; the file line is that plus the header.
    line = (lambda i: f"row {i + 1} (line {i + 2})") if csv else (lambda i: f"row {i + 1}")
    y = frame[target].to_numpy()
    missing = frame[target].isna().to_numpy()
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        raise DataError(f"{src}: target column {target!r} {line(i)} is empty")
    X = np.empty((len(frame), len(features)), dtype=np.float64)
    for j, col in enumerate(features):
        X[:, j] = _numeric_column(frame[col], src, str(col), line)
    if y.dtype.kind in "OUS":
        y = y.astype(str)
    elif y.dtype.kind == "f":
        _check_magnitude(y.astype(np.float64), src, f"target column {target!r}", line)
    warnings = _check_constant(X, list(map(str, features)), src)
    return Dataset(name, src, X, y, list(map(str, features)), target, infer_task(y), digest, warnings)


def _check_constant(X: np.ndarray, names: list[str], src: str) -> list[str]:
    """Refuse all-constant features; name the constant ones in a warning otherwise."""
    if len(X) < 2:
        return []
    constant = np.all(X == X[0], axis=0)
    if constant.all():
        shown = ", ".join(f"{n!r}={X[0, j]:g}" for j, n in enumerate(names[:5]))
        raise DataError(
            f"{src}: every feature column is constant ({shown}{', ...' if len(names) > 5 else ''}); "
            "there is nothing to learn from"
        )
    if constant.any():
        cols = [names[j] for j in np.flatnonzero(constant)]
        return [f"constant feature column(s) {cols} carry no information (kept; they scale to 0)"]
    return []


def _check_magnitude(values: np.ndarray, src: str, what: str, line: Callable[[int], str]) -> None:
    big = np.abs(values) > MAX_ABS_VALUE
    if big.any():
        i = int(np.flatnonzero(big)[0])
        raise DataError(
            f"{src}: {what} {line(i)}: value {float(values[i])!r} is too large (|value| > {MAX_ABS_VALUE:g}); "
            "rescale the column (e.g. log or units) before training"
        )


def _numeric_column(series, src: str, col: str, line: Callable[[int], str]) -> np.ndarray:
    import pandas as pd

    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    not_number = np.isnan(values) & series.notna().to_numpy()
    if not_number.any():
        i = int(np.flatnonzero(not_number)[0])
        raise DataError(f"{src}: column {col!r} {line(i)}: value {series.iloc[i]!r} is not a number")
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        what = "is missing (NaN)" if np.isnan(values[i]) else f"is infinite ({float(values[i])!r})"
        raise DataError(f"{src}: column {col!r} {line(i)} {what}; only finite numbers can be trained on")
    _check_magnitude(values, src, f"column {col!r}", line)
    return values


def check_class_sizes(ds: Dataset, test_size: float = 0.2, val_size: float = 0.1) -> None:
    """Refuse a classification target with a class too small to reach every part of the split.

    Raises
    ------
    DataError
        Naming the class and its row count; for a numeric target, with the hint to use ``--task regression``.
    """
    parts = 1 + (test_size > 0) + (val_size > 0)
    if ds.task != "regression":
        labels, counts = np.unique(ds.y, return_counts=True)
        small = counts < parts
        if small.any():
            k = int(np.flatnonzero(small)[0])
            raise DataError(
                f"{ds.source}: class {labels[k].item()!r} of target column {ds.target!r} has only "
                f"{counts[k]} row(s); need at least {parts} so the train, validation and test parts each get one"
                + (f"; {REGRESSION_HINT}" if ds.y.dtype.kind in "iuf" else "")
            )


def split_and_scale(ds: Dataset, test_size: float = 0.2, val_size: float = 0.1, seed: int = 0) -> Splits:
    """Seeded (stratified for classification) train/val/test split and a StandardScaler fitted on train.

    Raises
    ------
    DataError
        If a class has too few rows for every part to receive one.
    """
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    for name, frac in (("test_size", test_size), ("val_size", val_size)):
        if not 0 <= frac < 1:
            raise DataError(f"{name} must be in [0, 1), got {frac!r}")
    if not 0 < test_size + val_size < 1:
        raise DataError(f"test_size + val_size must be in (0, 1), got {test_size + val_size!r}")
    classify = ds.task != "regression"
    check_class_sizes(ds, test_size, val_size)
    idx = np.arange(len(ds.y))
    try:
        rest, test = train_test_split(idx, test_size=test_size, random_state=seed,
                                      stratify=ds.y if classify else None)
        val = np.array([], dtype=int)
        if val_size > 0:
            rest, val = train_test_split(rest, test_size=val_size / (1 - test_size), random_state=seed,
                                         stratify=ds.y[rest] if classify else None)
    except ValueError as exc:  # e.g. fewer test rows than classes
        raise DataError(f"{ds.source}: cannot split {len(idx)} rows of target {ds.target!r}: {exc}") from exc
    scaler = StandardScaler().fit(ds.X[rest])
    scale = scaler.scale_.copy()
    target_mean = target_scale = None
    if not classify:
        y_train = ds.y[rest].reshape(len(rest), -1).astype(np.float64)
        target_mean, target_scale = y_train.mean(axis=0), y_train.std(axis=0)
        target_scale[target_scale == 0] = 1.0
    tf = lambda rows: scaler.transform(ds.X[rows])  # noqa: E731
    return Splits(
        X_train=tf(rest), y_train=ds.y[rest],
        X_val=tf(val) if len(val) else np.empty((0, ds.X.shape[1])), y_val=ds.y[val],
        X_test=tf(test), y_test=ds.y[test],
        mean=scaler.mean_.copy(), scale=scale,
        classes=ds.classes, task=ds.task, feature_names=list(ds.feature_names),
        raw_test=ds.X[test], target_mean=target_mean, target_scale=target_scale,
    )
