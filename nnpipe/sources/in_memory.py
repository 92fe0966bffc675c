"""A folder or a glob of CSV/Parquet parts read into memory (``nnpipe train --in-memory`` on a folder).

The parts are listed and checked from their headers and footers first (one
format, the same columns in every part, the part that differs named), then
their size on disk is weighed against the memory this machine has free:
parts that fit are read and joined into one table; parts that do not are
refused with the way to train them where they lie (as a large source).
"""

from __future__ import annotations

from nnpipe.data.load import DataError, Dataset, apply_task, dataset_from_frame
from nnpipe.sources.location import open_source

# Bytes in memory per byte on disk, roughly: Parquet compresses (and pandas adds its overhead);
# a CSV number of ~8 characters becomes an 8-byte float.
EXPANSION = {"parquet": 5.0, "csv": 1.5}
MEMORY_SHARE = 0.5  # of the memory available now: the split, scaling and training need the rest


def available_bytes() -> int:
    """Memory this machine has available now."""
    import psutil

    return int(psutil.virtual_memory().available)


def load_parts(location: str, target: str, features: list[str] | None = None, task: str | None = None,
               available: int | None = None) -> Dataset:
    """Read every part of ``location`` into one validated :class:`Dataset`; its ``notes`` say how much was read.

    Raises
    ------
    DataError
        Parts of mixed formats or different columns (naming the part), a part
        that cannot be read, or parts too large for the memory available.
    """
    import pandas as pd

    source = open_source(location, target, features)  # lists the parts, checks each one's columns
    on_disk = source.n_bytes
    needed = int(on_disk * EXPANSION[source.fmt])
    free = available_bytes() if available is None else available
    if needed > MEMORY_SHARE * free:
        raise DataError(f"{location}: {len(source.files)} parts, {_mb(on_disk)} on disk (about {_mb(needed)} in "
                        f"memory), more than half of the {_mb(free)} available; train it as a large source "
                        "(leave out --in-memory)")
    frames = []
    for path, _ in source.files:
        try:
            frame = pd.read_parquet(path) if source.fmt == "parquet" else pd.read_csv(path)
        except Exception as exc:  # the reader's own message says what and where
            raise DataError(f"{path}: cannot be read as {source.fmt}: {str(exc).splitlines()[0]}") from exc
        frames.append(frame[source.columns] if set(source.columns) <= set(frame.columns) else frame)
    frame = pd.concat(frames, ignore_index=True)
    ds = apply_task(dataset_from_frame(frame, location, source.name, target, features, source.fingerprint), task)
    ds.notes.append(f"read {len(source.files)} {source.fmt} parts of {location} into memory: "
                    f"{_mb(on_disk)} on disk, {_mb(ds.X.nbytes + ds.y.nbytes)} as arrays, {len(ds.y)} rows")
    return ds


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.0f} kB"
