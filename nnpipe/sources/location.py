"""Large data sources: what a location holds, read from metadata, and its pieces.

A *source* is a CSV or Parquet file, a ``.csv.gz`` file, a directory of
Parquet parts (hive-style ``key=value`` folders too), a glob of CSV or Parquet
files, or any fsspec URL (``file://``, ``s3://``, ``gs://``, ...).
:func:`open_source` looks only at listings, sizes, Parquet footers and, for
CSV, the header and a few rows of the first file: the rows stay where they
are. It cuts the source into :class:`Piece` s (a few Parquet row groups of
one file, or a byte block of one CSV file) that whoever does the work reads
with :func:`read_piece`: Dask workers, or this process in ``single`` mode.

The global row order is the files in sorted path order, rows in file order.
It never depends on how the source is cut into pieces, so a split or a shard
defined on global positions is the same for any block size or worker count.

When a location counts as large (:func:`is_large`): a directory, a glob or a
URL always; a plain file when it is bigger than ``large_file_bytes``
(256 MB by default). Everything else keeps the in-memory path of
:mod:`nnpipe.data`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Iterator

from nnpipe.data.load import BUILTIN, DataError

LARGE_FILE_BYTES = 256 << 20
BLOCK_BYTES = 16 << 20  # a piece's float64 copies stay well under a worker's budget
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.xz", ".csv.zst")
_GLOB = re.compile(r"[*?\[]")
SAMPLE_BUFFER_BYTES = 1 << 16  # read size per column while sampling rows (pyarrow's buffered stream)
PIECE_BATCH_ROWS = 262_144  # rows per batch of one column (iter_columns): 2 MB as float64
WHOLE_PIECE_BYTES = 64 << 20  # a Parquet piece this small as float64 is read at once (iter_columns)
PIECE_BUFFER_BYTES = 1 << 20  # read size per column chunk then (a few large reads for object stores)


@dataclass(frozen=True)
class Piece:
    """One unit of reading: row groups of a Parquet file, or a block (or all) of a CSV file.

    Attributes
    ----------
    index : int
        Position in the source's global order.
    url : str
        What ``fsspec.open`` opens (protocol included).
    path : str
        What an error message shows (the plain path for local files).
    fmt : str
        ``parquet`` or ``csv``.
    rows : int or None
        Known from Parquet metadata; None for CSV (counted when first read).
    file_row0 : int or None
        First row of this piece within its file (known for Parquet).
    row_groups : tuple of int
        Parquet row groups, in order.
    block : (offset, length) or None
        CSV byte block of an uncompressed file; None means the whole file.
    hive : tuple of (key, value)
        Hive partition values from the folders.
    """

    index: int
    url: str
    path: str
    fmt: str
    rows: int | None = None
    file_row0: int | None = 0
    row_groups: tuple[int, ...] = ()
    block: tuple[int, int] | None = None
    hive: tuple[tuple[str, str], ...] = ()


@dataclass
class Source:
    """A large source, described from its metadata.

    Attributes
    ----------
    location : str
        As the user gave it.
    name : str
        Short name (the directory, file or glob stem): the default model name.
    target : str
    features : list of str
        Feature columns in the order the network sees them.
    columns : list of str
        Every column (hive partition keys included).
    fmt : str
    pieces : list of Piece
    files : list of (path, bytes)
    n_rows : int or None
        From Parquet metadata; None for CSV until the rows are counted.
    fingerprint : str
        SHA-256 over relative paths, sizes and Parquet footers (CSV: first and last 64 kB).
    storage_options : dict
        Passed to fsspec (credentials, endpoints).
    """

    location: str
    name: str
    target: str
    features: list[str]
    columns: list[str]
    fmt: str
    pieces: list[Piece]
    files: list[tuple[str, int]]
    n_rows: int | None
    fingerprint: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    @property
    def n_bytes(self) -> int:
        return sum(size for _, size in self.files)

    def describe(self) -> dict[str, Any]:
        """Small JSON-able facts for logs and run tags."""
        return {"location": self.location, "format": self.fmt, "files": len(self.files), "pieces": len(self.pieces),
                "bytes": self.n_bytes, "rows": self.n_rows, "features": len(self.features),
                "fingerprint": self.fingerprint}


def is_large(location: str, large_file_bytes: int = LARGE_FILE_BYTES) -> bool:
    """True when ``location`` is trained as a source on the workers instead of loaded in memory.

    A directory, a glob or a URL always is; a plain file when its size
    exceeds ``large_file_bytes``; a built-in dataset name never is.
    """
    loc = str(location)
    if loc in BUILTIN:
        return False
    if "://" in loc or _GLOB.search(loc) or os.path.isdir(loc):
        return True
    return os.path.isfile(loc) and os.path.getsize(loc) > large_file_bytes


def _fmt_of(path: str) -> str | None:
    p = path.lower()
    if p.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if p.endswith(CSV_SUFFIXES):
        return "csv"
    return None


def _hidden(rel: str) -> bool:
    # Spark/Hadoop markers (_SUCCESS, _metadata, .crc files) are not data.
    return any(part.startswith(("_", ".")) for part in PurePosixPath(rel).parts)


def _list_files(location: str, storage_options: dict[str, Any]) -> tuple[Any, list[str], str | None]:
    """The filesystem, the data files in sorted order, and the root folder (for hive keys)."""
    import fsspec

    from nnpipe.sources.remote import explain, probe

    probe(location, storage_options)  # an object store: a missing bucket, bad keys or a dead endpoint, in seconds
    try:
        fs, _, paths = fsspec.get_fs_token_paths(location, storage_options=storage_options)
    except ImportError as exc:
        raise explain(location, exc) from exc
    except ValueError as exc:
        raise DataError(f"{location}: cannot open this location: {exc}") from exc
    root = None
    if len(paths) == 1 and not _GLOB.search(location) and fs.isdir(paths[0]):
        root = paths[0].rstrip("/")
        paths = [p for p in fs.find(root) if not _hidden(p[len(root) + 1:])]
    elif not paths or not _GLOB.search(location) and not fs.exists(paths[0]):
        raise DataError(f"{location}: no such file, directory or matching files")
    paths = sorted(p for p in paths if not fs.isdir(p))
    if not paths:
        raise DataError(f"{location}: no data files found")
    return fs, paths, root


def _hive_pairs(rel: str) -> tuple[tuple[str, str], ...]:
    return tuple(tuple(part.split("=", 1)) for part in PurePosixPath(rel).parts[:-1] if "=" in part)  # type: ignore[misc]


def _parquet_footer(fs: Any, path: str, size: int) -> bytes:
    """The raw footer bytes (Thrift metadata): changes whenever the content does, read without the rows."""
    with fs.open(path, "rb") as f:
        f.seek(size - 8)
        tail = f.read(8)
        if tail[4:] != b"PAR1":
            raise DataError(f"{path}: not a Parquet file (no PAR1 footer)")
        n = int.from_bytes(tail[:4], "little")
        f.seek(size - 8 - n)
        return f.read(n)


def open_source(location: str, target: str, features: list[str] | None = None, *,
                block_bytes: int = BLOCK_BYTES, storage_options: dict[str, Any] | None = None) -> Source:
    """Describe ``location`` from metadata and cut it into pieces of about ``block_bytes``.

    Parameters
    ----------
    location : str
        File, directory, glob or fsspec URL.
    target : str
        The label (or regression value) column.
    features : list of str, optional
        Feature columns; default every column of the files but the target
        (hive partition keys only when named here).
    block_bytes : int
        Uncompressed bytes per piece (Parquet row groups are never split;
        compressed CSV files are one piece each).

    Raises
    ------
    DataError
        No files, mixed or unknown formats, a missing column (naming the file).
    """
    import pyarrow.parquet as pq

    from nnpipe.sources.remote import with_defaults

    opts = with_defaults(str(location), storage_options)
    if not target:
        raise DataError(f"{location}: a target column is required for a file source (--target COLUMN)")
    fs, paths, root = _list_files(str(location), opts)
    fmts = {_fmt_of(p) for p in paths}
    if root is not None:  # a folder may hold other files; keep the data ones
        paths = [p for p in paths if _fmt_of(p)]
        fmts = {_fmt_of(p) for p in paths}
    if None in fmts or len(fmts) != 1:
        kinds = sorted(str(f) for f in fmts)
        raise DataError(f"{location}: expected CSV or Parquet files of one format, found {kinds} "
                        f"(suffixes {PARQUET_SUFFIXES + CSV_SUFFIXES})")
    fmt = fmts.pop()
    local = type(fs).__name__ == "LocalFileSystem"
    sizes = [int(fs.size(p)) for p in paths]
    digest = hashlib.sha256()
    pieces: list[Piece] = []
    columns: list[str] | None = None
    n_rows: int | None = 0 if fmt == "parquet" else None
    for path, size in zip(paths, sizes):
        rel = path[len(root) + 1:] if root else PurePosixPath(path).name
        hive = _hive_pairs(rel) if root else ()
        show = path if local else fs.unstrip_protocol(path)
        url = fs.unstrip_protocol(path)
        digest.update(json.dumps([rel, size]).encode())
        if fmt == "parquet":
            footer = _parquet_footer(fs, path, size)
            digest.update(hashlib.sha256(footer).digest())
            meta = pq.ParquetFile(io.BytesIO(footer + len(footer).to_bytes(4, "little") + b"PAR1")).metadata
            cols = list(meta.schema.to_arrow_schema().names) + [k for k, _ in hive]
            groups, acc, start = [], 0, 0
            for g in range(meta.num_row_groups):
                rg = meta.row_group(g)
                groups.append(g)
                acc += rg.total_byte_size
                if acc >= block_bytes or g == meta.num_row_groups - 1:
                    rows = sum(meta.row_group(j).num_rows for j in groups)
                    pieces.append(Piece(len(pieces), url, show, fmt, rows, start, tuple(groups), None, hive))
                    start += rows
                    groups, acc = [], 0
            n_rows += meta.num_rows  # type: ignore[operator]
        else:
            cols = _csv_header(fs, path, show) + [k for k, _ in hive]
            with fs.open(path, "rb") as f:
                head = f.read(65536)
                if size > 65536:
                    f.seek(max(size - 65536, 65536))
                    head += f.read()
            digest.update(hashlib.sha256(head).digest())
            if url.lower().endswith(".csv") and size > block_bytes:
                for k, off in enumerate(range(0, size, block_bytes)):
                    pieces.append(Piece(len(pieces), url, show, fmt, None, 0 if k == 0 else None, (),
                                        (off, block_bytes), hive))
            else:
                pieces.append(Piece(len(pieces), url, show, fmt, None, 0, (), None, hive))
        if columns is None:
            columns, first = cols, show
        elif not features and set(cols) != set(columns):  # every column is used: every part must have them
            lost, extra = [c for c in columns if c not in cols], [c for c in cols if c not in columns]
            raise DataError(f"{show}: its columns differ from {first}'s"
                            + (f"; missing {lost}" if lost else "") + (f"; extra {extra}" if extra else "")
                            + " (name the columns to use with --features)")
        missing = [c for c in [target, *(features or [])] if c not in cols]
        if missing:
            raise DataError(f"{show}: column {missing[0]!r} not found; columns are {cols}")
    assert columns is not None
    hive_keys = {k for p in pieces for k, _ in p.hive}
    feats = list(features) if features else [c for c in columns if c != target and c not in hive_keys]
    if target in feats:
        raise DataError(f"{location}: the target {target!r} cannot also be a feature")
    if not feats:
        raise DataError(f"{location}: no feature columns besides the target {target!r}")
    dup = [c for c in feats if feats.count(c) > 1]
    if dup:
        raise DataError(f"{location}: feature {dup[0]!r} is listed twice")
    digest.update(json.dumps([target, feats]).encode())
    name = short_name(str(location))
    return Source(str(location), name, target, feats, columns, fmt, pieces, list(zip(
        [p if local else fs.unstrip_protocol(p) for p in paths], sizes)), n_rows, digest.hexdigest(), opts)


def short_name(location: str) -> str:
    """A short name for a location: the file, folder or glob stem (the default model name)."""
    loc = location.split("://", 1)[-1].rstrip("/")
    loc = re.split(r"[*?\[]", loc)[0].rstrip("/") or loc
    name = PurePosixPath(loc).name or "source"
    for suffix in (*CSV_SUFFIXES, *PARQUET_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or "source"
    return name


def _csv_header(fs: Any, path: str, show: str) -> list[str]:
    import pandas as pd

    try:
        with fs.open(path, "rb", compression="infer") as f:
            return [str(c) for c in pd.read_csv(f, nrows=0).columns]
    except pd.errors.EmptyDataError:
        raise DataError(f"{show}: file is empty (no header)") from None
    except Exception as exc:
        raise DataError(f"{show}: cannot be read as CSV: {exc}") from exc


def read_piece(piece: Piece, columns: list[str], storage_options: dict[str, Any] | None = None,
               all_columns: list[str] | None = None):
    """Read ``columns`` of one piece as a pandas DataFrame (on whoever calls it).

    ``all_columns`` is the CSV header (a CSV block after the first has none).
    """
    import fsspec
    import pandas as pd

    opts = storage_options or {}
    hive = dict(piece.hive)
    file_cols = [c for c in columns if c not in hive]
    with _read_errors(piece):
        if piece.fmt == "parquet":
            import pyarrow.parquet as pq

            with fsspec.open(piece.url, "rb", **opts) as f:
                table = pq.ParquetFile(f).read_row_groups(list(piece.row_groups), columns=file_cols)
            df = table.to_pandas()
        elif piece.block is None:
            with fsspec.open(piece.url, "rb", compression="infer", **opts) as f:
                df = pd.read_csv(f, usecols=file_cols)
        else:
            from fsspec.utils import read_block

            off, length = piece.block
            with fsspec.open(piece.url, "rb", **opts) as f:
                data = read_block(f, off, length, delimiter=b"\n")
            if off == 0:
                df = pd.read_csv(io.BytesIO(data), usecols=file_cols)
            else:
                df = pd.read_csv(io.BytesIO(data), header=None, names=all_columns, usecols=file_cols)
    return _with_hive(df, hive, columns)


@contextmanager
def _read_errors(piece: Piece) -> Iterator[None]:
    """Re-raise a reader's error as a :class:`DataError` naming the piece's file (I/O and data errors as they are)."""
    try:
        yield
    except (OSError, DataError):
        raise
    except Exception as exc:
        raise DataError(f"{piece.path}: cannot be read as {piece.fmt}: {exc}") from exc


def _with_hive(df: Any, hive: dict[str, str], columns: list[str]) -> Any:
    """``df[columns]`` with the hive partition columns ``columns`` asks for filled in from the path."""
    for key, value in hive.items():
        if key in columns:
            df[key] = _hive_value(value)
    return df[columns]


def iter_columns(piece: Piece, columns: list[str], storage_options: dict[str, Any] | None = None,
                 all_columns: list[str] | None = None,
                 batch_rows: int | None = None) -> Iterator[tuple[str, Iterator[Any]]]:
    """Each of ``columns`` in turn, as ``(name, batches)``: pandas Series of at most ``batch_rows`` rows.

    A Parquet row group can hold a million rows or more (pyarrow's default
    writes up to 1Mi rows per group). pyarrow's batch reader keeps about one
    column chunk per column it reads: 180 MB for the 40 columns of a 400k-row
    group even in 64k-row batches, 5 MB for one column. So a Parquet piece is read
    one column at a time from one open file, each in batches of
    ``batch_rows`` (default :data:`PIECE_BATCH_ROWS`); a hive column is its
    path value repeated. A piece of at most :data:`WHOLE_PIECE_BYTES` as
    float64, and a CSV piece (a block of at most :data:`BLOCK_BYTES`), is read
    at once, each column one batch: one read is 10-15% faster than 41 column
    reads, and costs a few times the piece's size. Consume each column's
    batches before asking for the next column.
    """
    if piece.fmt != "parquet" or piece.rows is None or piece.rows * len(columns) * 8 <= WHOLE_PIECE_BYTES:
        df = read_piece(piece, columns, storage_options, all_columns)
        for col in columns:
            yield col, iter([df[col]])
        return
    import fsspec
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq

    hive = dict(piece.hive)
    with fsspec.open(piece.url, "rb", **(storage_options or {})) as f:
        with _read_errors(piece):
            pf = pq.ParquetFile(f, buffer_size=PIECE_BUFFER_BYTES, pre_buffer=False)
        for col in columns:
            if col in hive:
                yield col, iter([pd.Series(np.full(piece.rows, _hive_value(hive[col])), name=col)])
            else:
                yield col, _column_batches(pf, piece, col, batch_rows or PIECE_BATCH_ROWS)


def _column_batches(pf: Any, piece: Piece, col: str, batch_rows: int) -> Iterator[Any]:
    with _read_errors(piece):
        batches = pf.iter_batches(batch_size=batch_rows, row_groups=list(piece.row_groups), columns=[col],
                                  use_threads=False)
    while True:
        with _read_errors(piece):  # not around the yield: the consumer's errors are its own
            batch = next(batches, None)
        if batch is None:
            return
        yield batch.column(0).to_pandas().rename(col)


def _hive_value(value: str) -> Any:
    try:
        return float(value) if any(ch in value for ch in ".eE") else int(value)
    except ValueError:
        return value


def sample_rows(source: Source, n: int = 5):
    """The first ``n`` rows of the first piece (features then target): the model's input example."""
    import fsspec
    import pandas as pd

    piece = source.pieces[0]
    cols = [*source.features, source.target]
    if piece.fmt == "parquet":
        import pyarrow.parquet as pq

        hive = dict(piece.hive)
        with fsspec.open(piece.url, "rb", **source.storage_options) as f:
            # buffer_size: read the first pages of each column chunk, not the whole chunk; one
            # column at a time: pyarrow decodes a first page of every column asked for at once.
            # For a part written as one 1M-row group the driver grew by 282 MB for 5 rows, then
            # 105 MB buffered, and 15 MB buffered column by column.
            pf = pq.ParquetFile(f, buffer_size=SAMPLE_BUFFER_BYTES, pre_buffer=False)
            df = pd.DataFrame({c: next(pf.iter_batches(batch_size=n, columns=[c])).column(0).to_pandas()
                               for c in cols if c not in hive}).head(n)
        return _with_hive(df, hive, cols)
    if piece.fmt == "csv" and not piece.hive:
        with fsspec.open(piece.url, "rb", compression="infer", **source.storage_options) as f:
            return pd.read_csv(f, usecols=cols, nrows=n)[cols]
    return read_piece(piece, cols, source.storage_options, source.columns).head(n)
