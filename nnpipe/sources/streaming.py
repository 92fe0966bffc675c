"""Training rows of a large source: held as arrays, or streamed a piece at a time.

A shard of a source is a list of *segments* ``(piece, row0, a, b)``: rows
``a:b`` of a piece's training rows (see
:meth:`nnpipe.sources.prep.PreparedSource.segments`). :func:`shard_arrays`
reads them into one training-dtype array pair (the in-memory path).
:class:`RowStream` instead reads them again every pass, holding at most two
segments at once (the current one and the next, read ahead in a thread):
segment order and the rows within each segment are shuffled by a seeded
stream, so a run is reproducible. Batches never straddle two segments (a
segment's last batch may be short).

With a :class:`~nnpipe.sources.segment_cache.SegmentCache`, a segment is
decoded once per run: the first read writes its arrays to the local disk and
later passes memory-map them. The seeded order and the bytes are the same,
so a cached run equals an uncached one exactly.

``single`` mode on a source trains through :func:`fit_stream` with the same
stream, in one process with bounded memory.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from typing import Any, Callable, Iterator

import numpy as np

from nnpipe.blas import step_threads
from nnpipe.config import TrainConfig
from nnpipe.core.network import Network, NetworkSpec
from nnpipe.reporting import Reporter
from nnpipe.results import Callback, FitResult, check_finite
from nnpipe.sources.prep import piece_rows
from nnpipe.sources.segment_cache import SegmentCache

Segment = tuple[Any, int, int, int]


def segment_arrays(seg: Segment, *, spec: dict, prep: dict, code: int, read: dict) -> tuple[np.ndarray, np.ndarray]:
    """One segment's rows, scaled and encoded in the network's dtype."""
    from nnpipe.model import Model

    piece, row0, a, b = seg
    X, y = piece_rows(piece, row0, code, **read, span=(a, b))
    ns = NetworkSpec.from_dict(spec)
    model = Model(ns, np.zeros(ns.n_params, dtype=ns.dtype), **prep)
    # Model.transform's arithmetic, in place: one float64 copy of the segment at a time, not three.
    X -= model.mean
    X /= model.scale
    return X.astype(ns.dtype, order="C"), np.ascontiguousarray(model.encode_targets(y))  # row-major for the steps


def shard_bytes(spec: NetworkSpec, rows: int) -> int:
    """Bytes of ``rows`` held as arrays: features in the network's dtype plus the encoded targets."""
    item = np.dtype(spec.dtype).itemsize
    y = 8 if spec.head == "softmax" else spec.n_outputs * item
    return rows * (spec.n_inputs * item + y)


def shard_arrays(segments: list[Segment], lo: int, **kw: Any) -> dict[str, Any]:
    """A whole shard in memory: ``{"X", "Y", "lo"}`` filled segment by segment (no concatenation copy)."""
    n = sum(b - a for _, _, a, b in segments)
    X = Y = None
    at = 0
    for seg in segments:
        Xs, Ys = segment_arrays(seg, **kw)
        if X is None:
            X = np.empty((n, Xs.shape[1]), dtype=Xs.dtype)
            Y = np.empty((n, *Ys.shape[1:]), dtype=Ys.dtype)
        X[at : at + len(Xs)], Y[at : at + len(Ys)] = Xs, Ys
        at += len(Xs)
    return {"X": X, "Y": Y, "lo": int(lo)}


class RowStream:
    """A shard read from the source each pass: ``next_batch`` for local steps, ``sync_chunks`` for ``sync``.

    Parameters
    ----------
    segments : list of (piece, row0, a, b)
    lo : int
        The shard's first row among all training rows.
    seed, stream_id : int
        Seed the pass order: ``SeedSequence(seed, spawn_key=(stream_id,))``.
    cache : SegmentCache, optional
        Keep decoded segments on the local disk after their first read (None: decode every pass).
    **kw
        ``spec``, ``prep``, ``code``, ``read`` for :func:`segment_arrays`.
    """

    def __init__(self, segments: list[Segment], lo: int, seed: int, stream_id: int = 0, local_id: int | None = None,
                 cache: SegmentCache | None = None, **kw: Any):
        self.segments = list(segments)
        self.sizes = [b - a for _, _, a, b in self.segments]
        self.rows = int(sum(self.sizes))
        self.lo = int(lo)
        self.seed, self.stream_id = int(seed), int(stream_id)
        self.kw = kw
        self.cache = cache
        # The local stream follows the trainer (local_id), the sync order the shard (stream_id).
        key = (self.stream_id,) if local_id is None else (self.stream_id, int(local_id))
        self.rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=key))
        self._reset_pass_cursor()
        self._sync: dict[str, Any] = {}
        self._pool: cf.ThreadPoolExecutor | None = None
        self._ahead: tuple[int, cf.Future] | None = None
        self.segments_read = 0

    def fork(self, local_id: int) -> "RowStream":
        """A fresh stream over the same rows for one trainer: trainers never share a cursor."""
        return RowStream(self.segments, self.lo, self.seed, self.stream_id, local_id, self.cache, **self.kw)

    def __getstate__(self) -> dict[str, Any]:  # moved between workers: no thread, no buffers
        state = dict(self.__dict__)
        state.update(_pool=None, _ahead=None, _X=None, _Y=None, _perm=None, _bx=None, _by=None, _sync={})
        return state

    def _reset_pass_cursor(self) -> None:
        self._order: np.ndarray | None = None
        self._k = 0
        self._X = self._Y = self._perm = None
        self._bx = self._by = None
        self._pos = 0
        self._pass_state = self.rng.bit_generator.state

    def _read(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Segment ``k``'s arrays: from the cache when it holds them, else decoded (and then cached)."""
        if self.cache is not None:
            hit = self.cache.get(k)
            if hit is not None:
                return hit
        out = segment_arrays(self.segments[k], **self.kw)
        if self.cache is not None:
            self.cache.put(k, *out)
        return out

    def _load(self, k: int, ahead: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Segment ``k``'s arrays; then start reading ``ahead`` in the background (two in memory at most)."""
        if self._ahead is not None and self._ahead[0] == k:
            out = self._ahead[1].result()
        else:
            out = self._read(k)
        self._ahead = None
        self.segments_read += 1
        if ahead is not None:
            if self._pool is None:
                self._pool = cf.ThreadPoolExecutor(1, thread_name_prefix="nnpipe-read")
            self._ahead = (ahead, self._pool.submit(self._read, ahead))
        return out

    def close(self) -> None:
        """Finish any read ahead (so nothing writes to the cache after the run) and stop the reader thread."""
        if self._ahead is not None:
            self._ahead[1].exception()
            self._ahead = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # ---- local stream: continuous passes ------------------------------------------------------
    def next_batch(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``batch`` rows (fewer at a segment's end) of the endless shuffled stream."""
        while self._X is None or self._pos >= len(self._X):
            if self._order is None or self._k >= len(self._order):
                self._pass_state = self.rng.bit_generator.state
                self._order, self._k = self.rng.permutation(len(self.segments)), 0
            k = int(self._order[self._k])
            nxt = int(self._order[self._k + 1]) if self._k + 1 < len(self._order) else None
            X, Y = self._load(k, nxt)
            perm = self.rng.permutation(len(X))
            self._X, self._Y, self._perm, self._pos = X, Y, perm, 0
            self._k += 1
        a = self._pos
        self._pos = min(a + batch, len(self._X))
        return self._gather(self._perm[a : self._pos])

    def _gather(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``idx`` of the current segment, copied into reused batch buffers (valid until the next call).

        Gathered from the segment as read (a mapped cache file, or the decoded
        arrays), never from a shuffled copy: one segment's bytes less in memory.
        The rows are those of ``X[perm][a:b]``, so the batches do not change.
        """
        k = len(idx)
        if self._bx is None or len(self._bx) < k or self._bx.dtype != self._X.dtype:
            self._bx = np.empty((k, *self._X.shape[1:]), dtype=self._X.dtype)
            self._by = np.empty((k, *self._Y.shape[1:]), dtype=self._Y.dtype)
        return (np.take(self._X, idx, axis=0, out=self._bx[:k], mode="clip"),
                np.take(self._Y, idx, axis=0, out=self._by[:k], mode="clip"))

    def epoch_batches(self, batch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One full pass of the stream in batches (``single`` mode)."""
        self._X, self._order = None, None
        seen = 0
        while seen < self.rows:
            Xb, Yb = self.next_batch(batch)
            seen += len(Xb)
            yield Xb, Yb

    def get_state(self) -> dict[str, Any]:
        return {"pass_rng": self._pass_state, "k": int(self._k), "pos": int(self._pos),
                "started": self._order is not None}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue exactly where :meth:`get_state` was taken (skipped segments are not read)."""
        self.rng.bit_generator.state = state["pass_rng"]
        self._reset_pass_cursor()
        if not state["started"]:
            return
        self._order, self._k = self.rng.permutation(len(self.segments)), 0
        for _ in range(state["k"] - 1):
            self.rng.permutation(self.sizes[int(self._order[self._k])])
            self._k += 1
        if state["k"] > 0:
            X, Y = self._load(int(self._order[self._k]))
            perm = self.rng.permutation(len(X))
            self._X, self._Y, self._perm, self._k = X, Y, perm, self._k + 1
            self._pos = state["pos"]

    # ---- sync: this shard's share of each global step ------------------------------------------
    def sync_chunks(self, epoch: int, step: int, n_steps: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """This shard's rows of step ``step``: an even ``1/n_steps`` share of its epoch order, in chunks.

        Epoch ``e`` walks the segments in an order seeded by ``(seed, stream_id, e)``,
        rows shuffled within each; a chunk never spans two segments.
        """
        bounds = np.linspace(0, self.rows, n_steps + 1).round().astype(np.int64)
        start, stop = int(bounds[step]), int(bounds[step + 1])
        s = self._sync
        if s.get("epoch") != epoch or s.get("at") != start or s.get("n_steps") != n_steps:
            rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(self.stream_id, 1 << 20, epoch)))
            order = rng.permutation(len(self.segments))
            s.clear()
            s.update(epoch=epoch, n_steps=n_steps, rng=rng, order=order, j=0, seg_start=0, at=0, X=None, Y=None)
            # Skip whole segments before ``start`` without reading them.
            while s["j"] < len(order) and s["seg_start"] + self.sizes[int(order[s["j"]])] <= start:
                rng.permutation(self.sizes[int(order[s["j"]])])
                s["seg_start"] += self.sizes[int(order[s["j"]])]
                s["j"] += 1
            s["at"] = start
        while s["at"] < stop:
            if s["X"] is None:
                k = int(s["order"][s["j"]])
                nxt = int(s["order"][s["j"] + 1]) if s["j"] + 1 < len(s["order"]) else None
                X, Y = self._load(k, nxt)
                perm = s["rng"].permutation(len(X))
                s["X"], s["Y"] = X[perm], Y[perm]
            a = s["at"] - s["seg_start"]
            b = min(stop - s["seg_start"], len(s["X"]))
            yield s["X"][a:b], s["Y"][a:b]
            s["at"] = s["seg_start"] + b
            if b == len(s["X"]):
                s["seg_start"] += len(s["X"])
                s["j"] += 1
                s["X"] = s["Y"] = None


def stream_sync_grad(trainer: Any, theta: np.ndarray, epoch: int, step: int, batch: int | None = None) -> tuple:
    """``ShardTrainer.sync_grad`` for a streamed shard: the row-weighted mean of per-chunk gradients.

    ``batch`` is the global batch (default ``config.batch_size``).
    """
    t0 = time.perf_counter()
    stream: RowStream = trainer.stream
    n_steps = -(-trainer.n_total // min(int(batch or trainer.config.batch_size), trainer.n_total))
    np.copyto(trainer.theta, theta)
    acc = np.zeros_like(trainer.grad)
    loss_sum, rows, correct = 0.0, 0, 0
    for Xc, Yc in stream.sync_chunks(epoch, step, n_steps):
        loss, c = trainer.net.step_views(trainer.views, trainer.grad_views, Xc, Yc, trainer.config.l2,
                                         trainer.want_correct)
        acc += len(Xc) * trainer.grad
        loss_sum += loss * len(Xc)
        rows += len(Xc)
        correct += c
    if rows == 0:
        return None, 0.0, 0, 0, time.perf_counter() - t0
    np.divide(acc, rows, out=trainer.grad)
    return trainer.grad, loss_sum, rows, correct, time.perf_counter() - t0


def fit_stream(spec: NetworkSpec, theta: np.ndarray, stream: RowStream, config: TrainConfig, *,
               validation: Callable[[np.ndarray], dict[str, float]] | tuple | None = None,
               callbacks: tuple[Callback, ...] | list[Callback] = ()) -> FitResult:
    """Single-process training on a stream: one epoch is one pass, memory bounded by two segments.

    Same optimizer, schedule, early stopping and callbacks as :func:`nnpipe.core.training.fit`;
    the batch order is the stream's (pieces shuffled, rows shuffled within each).
    """
    net = Network(spec)
    opt, schedule = config.make_optimizer(), config.make_schedule()
    theta = np.array(theta, dtype=net.dtype, copy=True)
    state = opt.init(theta)
    reporter = Reporter(spec, config, validation, callbacks, "single-stream")
    with step_threads(spec, config.batch_size) as blas:
        epoch_loop(net, theta, state, stream, config, reporter, opt, schedule)
    return reporter.result(theta, state, {"mode": "single", "workers": 1, "data_path": "streaming",
                                          "segments_read": stream.segments_read, "blas_threads": blas})


def epoch_loop(net: Network, theta: np.ndarray, state: dict, stream: RowStream, config: TrainConfig,
               reporter: Reporter, opt: Any, schedule: Callable[[int], float]) -> None:
    """:func:`fit_stream`'s epochs, updating ``theta`` and ``state`` in place."""
    from nnpipe.core.training import clip_by_global_norm

    grad = np.empty_like(theta)
    views, grad_views = net.views(theta), net.views(grad)
    want_correct = net.head.task != "regression"
    for epoch in range(config.epochs):
        lr = schedule(epoch)
        t0 = time.perf_counter()
        loss_sum, correct, n = 0.0, 0, 0
        for Xb, Yb in stream.epoch_batches(config.batch_size):
            loss, c = net.step_views(views, grad_views, Xb, Yb, config.l2, want_correct)
            loss_sum += loss * len(Xb)
            correct += c
            n += len(Xb)
            clip_by_global_norm(grad, config.clip_norm)
            opt.step(theta, grad, state, lr, inplace=True)
        logs = {"train/loss": loss_sum / n, "lr": lr, "train/samples_per_s": n / (time.perf_counter() - t0)}
        if want_correct:
            logs["train/accuracy"] = correct / n
        check_finite(theta, f"after epoch {epoch}")
        if reporter.end_epoch(epoch, theta, logs):
            break
