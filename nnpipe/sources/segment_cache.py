"""Decoded segments of a streamed shard, kept on the local disk so each piece is decoded once per run.

The first pass of a :class:`~nnpipe.sources.streaming.RowStream` reads each
segment from the source (Parquet/CSV decode, split, scale, encode) and writes
the result as two ``.npy`` files; later passes memory-map those files instead.
The bytes are the decoded arrays themselves, so a cached pass yields exactly
the rows, in exactly the order, of an uncached one.

Layout: one directory per run, shard and process, ``<root>/<run>-s<shard>-p<pid>``.
The process id in the name is the owner: a directory whose owner is gone is
stale (its worker died, and a dead process cannot clean up), and
:func:`clear` removes it from any process on the same machine. The driver
calls :func:`clear` on every worker when a run ends, finished or failed, for
the run's own directories and every stale one; a run's start sweeps the stale
ones too.

Counters per run (segments decoded, segments read from the cache) live in the
process that streams and are returned (and reset) by :func:`clear`.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterable

import numpy as np
import psutil

log = logging.getLogger("nnpipe")

DIR_NAME = "nnpipe-stream-cache"

# Per run id, in this process: {"decoded": n, "cache_reads": m, "errors": k}.
_STATS: dict[str, dict[str, int]] = {}
# Runs cleared in this process: a read-ahead still in flight when the run ended must not leave files behind.
_CLOSED: set[str] = set()


def no_counts() -> dict[str, int]:
    """The counters of a run that decoded nothing: ``{"decoded": 0, "cache_reads": 0, "errors": 0}``."""
    return {"decoded": 0, "cache_reads": 0, "errors": 0}


def new_run_id() -> str:
    """A run id for cache directory names (hex, no dashes: the name splits on them)."""
    return uuid.uuid4().hex[:12]


class SegmentCache:
    """Where one shard's decoded segments live on this machine's disk.

    Parameters
    ----------
    root : str
        The directory holding cache directories (created on first write).
    run : str
        The run's id (:func:`new_run_id`): :func:`clear` removes by it.
    shard : int
        The shard's index: forks of one shard's stream in one process share the files.
    """

    def __init__(self, root: str, run: str, shard: int):
        self.root, self.run, self.shard = str(root), str(run), int(shard)
        self.enabled = True
        self._dir: Path | None = None
        self._said: set[str] = set()
        self._made = False

    def __getstate__(self) -> dict:
        # The directory belongs to the process that writes it: a copy on another worker makes its own.
        return {**self.__dict__, "_dir": None, "_said": set(), "_made": False}

    @property
    def directory(self) -> Path:
        if self._dir is None:
            self._dir = Path(self.root) / f"{self.run}-s{self.shard}-p{os.getpid()}"
        return self._dir

    def _paths(self, k: int) -> tuple[Path, Path]:
        return self.directory / f"seg-{k:06d}-X.npy", self.directory / f"seg-{k:06d}-Y.npy"

    def _count(self, key: str) -> None:
        stats = _STATS.setdefault(self.run, no_counts())
        stats[key] += 1

    def _say_once(self, what: str, msg: str, *args: object) -> None:
        if what not in self._said:
            self._said.add(what)
            log.info(msg, *args)

    def get(self, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Segment ``k``'s arrays, memory-mapped read-only, or None when not cached (yet)."""
        if not self.enabled:
            return None
        px, py = self._paths(k)
        try:
            # Plain ndarray views of the maps (np.memmap's subclass hooks would run on every batch slice).
            X, Y = np.asarray(np.load(px, mmap_mode="r")), np.asarray(np.load(py, mmap_mode="r"))
        except (OSError, ValueError):  # not written yet, or removed under us: decode again
            return None
        self._count("cache_reads")
        self._say_once("read", "streaming from cache: shard %d reads decoded pieces from %s", self.shard,
                       self.directory)
        return X, Y

    def put(self, k: int, X: np.ndarray, Y: np.ndarray) -> None:
        """Keep segment ``k``'s decoded arrays; on a disk error stop caching this shard and say so."""
        self._count("decoded")
        if not self.enabled:
            return
        px, py = self._paths(k)
        try:
            if not self._made:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._made = True
                free = shutil.disk_usage(self.directory).free
                self._say_once("write", "streaming: decoding pieces (pass 1) of shard %d, cached at %s "
                               "(%.0f MB free there)", self.shard, self.directory, free / 1e6)
            # Written under a temporary name and renamed: a reader never maps half a file.
            for path, arr in ((px, X), (py, Y)):
                tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}")
                with open(tmp, "wb") as f:
                    np.save(f, arr, allow_pickle=False)
                os.replace(tmp, path)
            if self.run in _CLOSED:
                raise FileNotFoundError("the run has ended")
        except OSError as exc:
            self.enabled = False
            if self.run in _CLOSED:  # the run's end removed the directory under this write: nothing to say
                shutil.rmtree(self.directory, ignore_errors=True)
                return
            self._count("errors")
            log.warning("streaming: cannot cache decoded pieces at %s (%s); shard %d decodes every pass",
                        self.directory, exc, self.shard)
            shutil.rmtree(self.directory, ignore_errors=True)


def stale_or_of_run(path: Path, run: str | None) -> bool:
    """Whether cache directory ``path`` belongs to ``run`` or to a process that no longer exists."""
    name = path.name
    try:
        owner_run, _, pid = name.rsplit("-", 2)
        pid_n = int(pid.removeprefix("p"))
    except ValueError:
        return False  # not ours
    return (run is not None and owner_run == run) or not psutil.pid_exists(pid_n)


def clear(roots: Iterable[str | Path], run: str | None = None) -> dict:
    """Remove ``run``'s cache directories and every stale one under ``roots``; return this process's counters.

    Returns
    -------
    dict
        ``{"removed": [paths], "decoded": n, "cache_reads": m, "errors": k}``; the
        counters are ``run``'s in this process (then reset), zeros without ``run``.
    """
    if run is not None:
        _CLOSED.add(run)
    removed = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for path in root.iterdir():
            if path.is_dir() and stale_or_of_run(path, run):
                shutil.rmtree(path, ignore_errors=True)
                if not path.exists():
                    removed.append(str(path))
        try:
            root.rmdir()  # only when empty
        except OSError:
            pass
    stats = _STATS.pop(run, None) if run is not None else None
    return {"removed": removed, **(stats or no_counts())}


def single_process_root() -> Path:
    """The cache root of a stream in this process (``single`` mode): under the system's temporary directory."""
    import tempfile

    return Path(tempfile.gettempdir()) / DIR_NAME
