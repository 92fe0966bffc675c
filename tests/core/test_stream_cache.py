"""The decoded-piece cache of a stream, in one process: decoded once, the same rows, removed afterwards."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

import nnpipe
from nnpipe.api import source_spec
from nnpipe.config import TrainConfig
from nnpipe.sources import open_source, segment_cache
from nnpipe.sources.prep import TRAIN, local_runner, prepare
from nnpipe.sources.segment_cache import SegmentCache
from nnpipe.sources.streaming import RowStream
from tests.core.test_sources import _prep, frame, write_parts


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = write_parts(frame(), tmp_path_factory.mktemp("cache") / "parts")
    return prepare(open_source(str(folder), "label", block_bytes=1), local_runner, seed=0)


def _stream(p, cache):
    n = p.rows(TRAIN)
    spec = source_spec(p, hidden=(8,))
    return RowStream(p.segments(TRAIN, 0, n), 0, seed=5, cache=cache, code=TRAIN, spec=spec.to_dict(),
                     prep=_prep(p), read=p.read_kwargs())


def test_later_passes_read_the_cache_and_yield_the_same_batches(prepared, tmp_path):
    plain, cached = _stream(prepared, None), _stream(prepared, SegmentCache(str(tmp_path), "r1", 0))
    n_seg = len(plain.segments)
    for _ in range(3):
        for (Xa, Ya), (Xb, Yb) in zip(plain.epoch_batches(32), cached.epoch_batches(32), strict=True):
            np.testing.assert_array_equal(Xa, Xb)
            np.testing.assert_array_equal(Ya, Yb)
    stats = segment_cache.clear([tmp_path], "r1")
    assert stats["decoded"] == n_seg and stats["cache_reads"] == 2 * n_seg
    assert stats["removed"] == [str(tmp_path / f"r1-s0-p{os.getpid()}")] and not tmp_path.exists()


def test_single_mode_caches_equals_uncached_and_removes_the_cache(prepared, caplog):
    root = segment_cache.single_process_root()

    def ours() -> set:  # the root is shared with every process on the machine (other xdist workers too)
        return set(root.glob(f"*-p{os.getpid()}")) if root.exists() else set()

    before = ours()
    cfg = TrainConfig(epochs=3, stream=True, batch_size=32, seed=2, dtype="float64")
    with caplog.at_level(logging.INFO, logger="nnpipe"):
        out = nnpipe.train(prepared, cfg, hidden=(8,))
    ref = nnpipe.train(prepared, dataclasses.replace(cfg, stream_cache=False), hidden=(8,))
    np.testing.assert_array_equal(out.theta, ref.theta)  # the same bytes in the same order
    n_seg = len(prepared.segments(TRAIN, 0, prepared.rows(TRAIN)))
    assert out.info["stream_decoded"] == n_seg and out.info["stream_cache_reads"] == 2 * n_seg
    assert "stream_decoded" not in ref.info
    assert "streaming: decoding pieces (pass 1)" in caplog.text and "streaming from cache" in caplog.text
    assert ours() <= before


def test_a_dead_process_cache_is_swept_and_a_live_one_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"abc-s0-p{int(dead.stdout)}"
    live = tmp_path / f"def-s1-p{os.getpid()}"
    other = tmp_path / "not-ours"
    for d in (stale, live, other):
        d.mkdir()
    out = segment_cache.clear([tmp_path])
    assert out["removed"] == [str(stale)] and live.exists() and other.exists()
    assert segment_cache.clear([tmp_path], "def")["removed"] == [str(live)]


def test_an_unwritable_cache_falls_back_to_decoding(prepared, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache root should be a directory")
    plain, cached = _stream(prepared, None), _stream(prepared, SegmentCache(str(blocker), "r2", 0))
    with caplog.at_level(logging.WARNING, logger="nnpipe"):
        for _ in range(2):
            for (Xa, _), (Xb, _) in zip(plain.epoch_batches(50), cached.epoch_batches(50), strict=True):
                np.testing.assert_array_equal(Xa, Xb)
    assert "cannot cache decoded pieces" in caplog.text and str(blocker) in caplog.text
    stats = segment_cache.clear([blocker], "r2")
    assert stats["errors"] == 1 and stats["cache_reads"] == 0 and stats["decoded"] == 2 * len(plain.segments)
