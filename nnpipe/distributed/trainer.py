"""The per-shard trainer (what runs on the workers) and the shard it trains on.

Everything here is module-level and takes plain arrays, so Dask can ship it by
reference. :class:`ShardTrainer` lives on a worker as a Dask actor next to its
shard; it keeps the shard, a parameter buffer, its optimizer state and its
random stream between rounds, so a round moves parameters only. The math is
the core's (:meth:`Network.step_views`, the optimizers); nothing is rewritten.
It imports nothing from Dask: tests build it in-process and call it directly.

Data access goes through :func:`unpack_shard` only: a shard is anything it
can turn into ``(X, Y, lo)``, so another kind of shard (streamed from storage,
say) plugs in there without touching the trainer.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from nnpipe import blas
from nnpipe.config import TrainConfig
from nnpipe.core.network import Network, NetworkSpec
from nnpipe.core.training import clip_by_global_norm
from nnpipe.data.checks import aligned


def build_shard(X: np.ndarray, Y: np.ndarray, lo: int) -> dict[str, Any]:
    """A shard as the trainer wants it: contiguous arrays and its first global row."""
    return {"X": np.ascontiguousarray(X), "Y": np.ascontiguousarray(Y), "lo": int(lo)}


def shard_rows(shard: dict[str, Any]) -> int:
    return len(shard["X"])


def unpack_shard(shard: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """``(X, Y, lo)`` of a shard: its rows, their targets and its first global row.

    The trainer's one access to its data. A :func:`build_shard` dict today;
    another shard type adds a branch here.
    """
    if isinstance(shard, dict) and {"X", "Y", "lo"} <= set(shard):
        return aligned(shard["X"]), aligned(shard["Y"]), int(shard["lo"])
    raise TypeError(f"a shard must be a dict with 'X', 'Y' and 'lo' (see build_shard), got {type(shard).__name__}")


class ShardTrainer:
    """Trains on one shard; lives on a worker as a Dask actor.

    Parameters
    ----------
    spec : dict
        ``NetworkSpec.to_dict()``.
    shard : dict
        From :func:`build_shard` (Dask resolves the shard future to it); read via :func:`unpack_shard`.
    config : TrainConfig
    trainer_id : int
        Seeds this trainer's stream: ``SeedSequence(config.seed).spawn(...)[trainer_id]``.
    n_total : int
        Rows in the whole training set (``sync`` rebuilds the global batch order).
    delay_s : float
        Seconds to sleep per local round: a straggler on purpose (tests, demos), injected by the pool.
    """

    def __init__(self, spec: dict, shard: dict, config: TrainConfig, trainer_id: int, n_total: int,
                 delay_s: float = 0.0):
        blas.prepare_training_process()
        self.spec = NetworkSpec.from_dict(spec)
        self.net = Network(self.spec)
        # Source hook: a shard may be a stream (nnpipe.sources.streaming.RowStream) read piece by piece, not arrays.
        self.stream = shard["stream"].fork(trainer_id) if isinstance(shard, dict) and "stream" in shard else None
        if self.stream is None:
            self.X, self.Y, self.lo = unpack_shard(shard)
            self.n = len(self.X)
        else:
            self.X = self.Y = None
            self.lo, self.n = int(shard["lo"]), self.stream.rows
        self.config = config
        self.trainer_id = int(trainer_id)
        self.n_total = int(n_total)
        self.delay_s = float(delay_s)
        self.opt = config.make_optimizer()
        self.theta = np.zeros(self.spec.n_params, dtype=self.net.dtype)
        self.grad = np.empty_like(self.theta)
        self.delta = np.empty_like(self.theta)
        self.views, self.grad_views = self.net.views(self.theta), self.net.views(self.grad)
        self.state = self.opt.init(self.theta)
        self.want_correct = self.net.head.task != "regression"
        # Local stream (local-sgd, async): a permutation of this shard per pass. Batches are
        # gathered by index into two batch-sized buffers, never a shuffled copy of the shard:
        # the shard is held once (measured: no slower than slicing a shuffled copy, whose
        # random reads are the same, and one shard's bytes less at the peak).
        seq = np.random.SeedSequence(config.seed, spawn_key=(self.trainer_id,))
        self.rng = np.random.default_rng(seq)
        self.pos = self.n  # forces a fresh pass on the first batch
        self.perm: np.ndarray | None = None
        self._pass_rng_state = self.rng.bit_generator.state
        self._bx = self._by = None
        # Overlapped rounds: own deltas the driver has not merged yet, by round; end of the last round.
        self._own: dict[int, np.ndarray] = {}
        self._round_end: float | None = None
        self._last_round: int | None = None
        # Global stream (sync): the single-process permutation sequence, replayed.
        self._sync_epoch = -1
        self._sync_rng = None
        self._sync_batch = 0

    # ---- sync: this shard's rows of each global batch -------------------------------------
    def _sync_prepare(self, epoch: int, batch: int) -> None:
        if epoch < self._sync_epoch or self._sync_rng is None:
            self._sync_rng, self._sync_epoch = np.random.default_rng(self.config.seed), -1
        while self._sync_epoch < epoch:  # replay to reach ``epoch`` (after a resume or a rebuild)
            self._sync_perm = self._sync_rng.permutation(self.n_total)
            self._sync_epoch += 1
        perm = self._sync_perm
        pos = np.flatnonzero((perm >= self.lo) & (perm < self.lo + self.n))
        batch = min(batch, self.n_total)
        self._sync_batch = batch
        edges = np.arange(0, self.n_total + batch, batch)
        self._sync_bounds = np.searchsorted(pos, edges)
        # This shard's rows in the epoch's global order, as indices: each step gathers its own.
        self._sync_local = perm[pos] - self.lo

    def sync_grad(self, theta: np.ndarray, epoch: int, step: int, batch: int | None = None) -> tuple:
        """Gradient of this shard's part of global batch ``step`` of ``epoch``.

        ``batch`` is the global batch size (default ``config.batch_size``; the
        warm-up epochs of ``local-sgd`` and ``async`` use ``batch_size x shards``).

        Returns ``(grad or None, loss * rows, rows, correct, seconds)``; ``grad``
        is the mean-loss gradient over this shard's rows of the batch.
        """
        if self.stream is not None:  # source hook
            from nnpipe.sources.streaming import stream_sync_grad

            return stream_sync_grad(self, theta, epoch, step, batch)
        t0 = time.perf_counter()
        batch = int(batch or self.config.batch_size)
        if epoch != self._sync_epoch or min(batch, self.n_total) != self._sync_batch:
            self._sync_prepare(epoch, batch)
        a, b = self._sync_bounds[step], self._sync_bounds[step + 1]
        if b == a:
            return None, 0.0, 0, 0, time.perf_counter() - t0
        np.copyto(self.theta, theta)
        Xb, Yb = self._gather(self._sync_local[a:b])
        loss, correct = self.net.step_views(self.views, self.grad_views, Xb, Yb, self.config.l2, self.want_correct)
        return self.grad, loss * (b - a), int(b - a), correct, time.perf_counter() - t0

    # ---- local-sgd and async: K steps on the local stream ---------------------------------
    def _next_batch(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        if self.stream is not None:  # source hook
            return self.stream.next_batch(batch)
        if self.pos >= self.n:
            self._pass_rng_state = self.rng.bit_generator.state  # for an exact resume
            self.perm, self.pos = self.rng.permutation(self.n), 0
        a = self.pos
        self.pos = min(a + batch, self.n)
        return self._gather(self.perm[a : self.pos])

    def _gather(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``idx`` of the shard, copied into reused batch buffers (valid until the next call)."""
        k = len(idx)
        if self._bx is None or len(self._bx) < k:
            self._bx = np.empty((k, *self.X.shape[1:]), dtype=self.X.dtype)
            self._by = np.empty((k, *self.Y.shape[1:]), dtype=self.Y.dtype)
        # mode="clip": the indices come from a permutation; "raise" would buffer the output first.
        return (np.take(self.X, idx, axis=0, out=self._bx[:k], mode="clip"),
                np.take(self.Y, idx, axis=0, out=self._by[:k], mode="clip"))

    def local_round(self, theta: np.ndarray, steps: int, lr: float, return_delta: bool = False) -> tuple:
        """Run ``steps`` optimizer steps from ``theta`` with this trainer's own state.

        Returns ``(theta_or_delta, loss_sum, rows, correct, seconds)``; with
        ``return_delta`` the first item is ``theta_after - theta``.
        """
        t0 = time.perf_counter()
        if self.delay_s:
            time.sleep(self.delay_s)
        np.copyto(self.theta, theta)
        batch = self.config.batch_size
        loss_sum, rows, correct = 0.0, 0, 0
        for _ in range(int(steps)):
            Xb, Yb = self._next_batch(batch)
            loss, c = self.net.step_views(self.views, self.grad_views, Xb, Yb, self.config.l2, self.want_correct)
            loss_sum += loss * len(Xb)
            rows += len(Xb)
            correct += c
            clip_by_global_norm(self.grad, self.config.clip_norm)
            self.opt.step(self.theta, self.grad, self.state, lr, inplace=True)
        out = self.theta
        if return_delta:
            out = np.subtract(self.theta, theta, out=self.delta)
        # The buffer is returned without a copy: it is serialised before the
        # driver can send this trainer its next round.
        return out, loss_sum, rows, correct, time.perf_counter() - t0

    def overlap_round(self, theta: np.ndarray, merged: int, round_: int, steps: int, lr: float,
                      after: int | None = None) -> tuple:
        """Round ``round_`` of overlapped local SGD (:mod:`.overlap`): start from ``theta`` plus own unmerged progress.

        ``theta`` holds the merges of rounds ``< merged``. This trainer's own
        deltas of rounds ``merged .. round_ - 1`` are not in it yet (they are
        travelling or waiting for the other trainers), so the round starts from
        ``theta`` plus those deltas; the driver need not wait for a merge before
        sending the next round. ``merged == round_`` starts from ``theta`` as is.

        ``after``: the round this trainer must have run first. Two rounds
        queued for one trainer travel on two connections and may arrive in
        the other order; the early one then returns ``None`` as its delta,
        untouched, and the driver sends it again.

        Returns ``((delta, idle_s), loss_sum, rows, correct, seconds)``: this
        round's parameter change and the seconds this trainer sat idle since
        its previous round ended.
        """
        if after is not None and self._last_round != after:
            return (None, 0.0), 0.0, 0, 0, 0.0
        t0 = time.perf_counter()
        idle = t0 - self._round_end if self._round_end is not None else 0.0
        self._own = {r: d for r, d in self._own.items() if merged <= r < round_}
        start = np.array(theta, dtype=self.theta.dtype, copy=True)
        for d in self._own.values():
            start += d
        out = self.local_round(start, steps, lr)
        delta = np.subtract(self.theta, start)  # a new array per round: the ledger keeps it
        self._own[int(round_)] = delta
        self._last_round = int(round_)
        self._round_end = time.perf_counter()
        return (delta, idle), *out[1:4], self._round_end - t0

    # ---- checkpointing ---------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """Optimizer state and stream position (the pass's starting rng state and offset)."""
        if self.stream is not None:  # source hook
            return {"opt": {k: v.copy() for k, v in self.state.items()}, "stream": self.stream.get_state()}
        return {"opt": {k: v.copy() for k, v in self.state.items()},
                "pass_rng": self._pass_rng_state, "pos": int(self.pos), "started": self.perm is not None}

    def set_state(self, state: dict[str, Any]) -> bool:
        """Restore :meth:`get_state`'s output; the stream continues exactly where it was.

        A state with ``opt`` only (the driver's optimizer state after sync
        warm-up epochs) replaces the optimizer state and leaves the stream alone.
        """
        self.state = {k: np.array(v, copy=True) for k, v in state["opt"].items()}
        if self.stream is not None and "stream" in state:  # source hook
            self.stream.set_state(state["stream"])
            return True
        if "pass_rng" not in state:
            return True
        self.rng.bit_generator.state = state["pass_rng"]
        self.pos = self.n
        if state["started"]:
            self._next_batch(0)  # regenerate the pass's permutation from its starting state
            self.pos = int(state["pos"])
        return True

