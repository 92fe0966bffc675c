"""The single-process loop's fused path: whole epochs with every buffer allocated once.

The general step (:meth:`nnpipe.core.network.Network.step_views`, then
:meth:`nnpipe.core.optimizers.Optimizer.step`) is short and clear, but a step
of the seed's 4-4-3 network at batch 10 makes about fifty NumPy calls and a
dozen temporaries, each a few microseconds on this machine: overhead, not
arithmetic, sets the speed of tiny batches. This path runs the same float
operations in the same order, so its parameters equal the general loop's bit
for bit (``tests/core/test_fused.py``), and saves the rest:

- rows are gathered a block at a time (:data:`BLOCK_ROWS`), and each step's
  batch is a view of the block;
- pre-activations, activations, input gradients and the softmax scratch live
  in buffers made once for the whole run;
- for the softmax head, the one-hot targets and the index of each row's loss
  term are made once per block, and the predicted classes compared once per
  block;
- the optimizer updates through its :meth:`~nnpipe.core.optimizers.Optimizer.stepper`
  (Adam keeps ``m`` and ``v`` in one array: three calls for both moments).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from nnpipe.core.network import Network, count_correct, l2_penalty
from nnpipe.core.optimizers import Optimizer, State, clip_by_global_norm

# Shuffled rows gathered at once: big enough that the gather's cost per step
# vanishes, small enough (a few MB at 64 float32 features) not to copy the data set.
BLOCK_ROWS = 8192


class FusedLoop:
    """Runs epochs of mini-batch training on ``X``, ``Y`` updating ``theta`` and ``state`` in place.

    Parameters
    ----------
    net : Network
    opt : Optimizer
    theta : ndarray of shape (n_params,)
        Updated in place.
    state : dict of ndarray
        The optimizer's state, updated in place (its arrays may be replaced by
        the optimizer's own buffers, so the caller must own the dict).
    X, Y : ndarray
        Training rows and encoded targets.
    batch : int
        Rows per step (the last step of an epoch may be shorter).
    l2, clip_norm, want_correct
        As in :func:`nnpipe.core.training.fit_loop`.
    """

    def __init__(self, net: Network, opt: Optimizer, theta: np.ndarray, state: State, X: np.ndarray,
                 Y: np.ndarray, batch: int, *, l2: float = 0.0, clip_norm: float | None = None,
                 want_correct: bool = True):
        self.net, self.X, self.Y, self.batch = net, X, Y, batch
        self.l2, self.clip_norm, self.want_correct = l2, clip_norm, want_correct
        self.grad, self.update = opt.stepper(theta, state)
        self.views, self.grad_views = net.views(theta), net.views(self.grad)
        n, dtype, widths = len(X), net.dtype, net.spec.sizes[1:]
        # A block is a whole number of batches, so no batch straddles two blocks.
        block = batch * max(1, BLOCK_ROWS // batch)
        self.block = block = n if block >= n else block
        self.Xblk = np.empty((block, *X.shape[1:]), X.dtype)
        self.Yblk = np.empty((block, *Y.shape[1:]), Y.dtype)
        self.Zs = [np.empty((batch, w), dtype) for w in widths]
        self.dAs = [np.empty((batch, w), dtype) for w in widths[:-1]]
        self.ones = np.ones(batch, dtype)
        self.softmax = net.spec.head == "softmax"
        if self.softmax:
            k = widths[-1]
            self.eye = np.eye(k, dtype=dtype)
            self.onehot = np.empty((block, k), dtype)
            self.col = np.empty((batch, 1), dtype)
            # Row i of a block is row i % batch of its step's P: its loss term
            # sits at flat index (i % batch) * k + y_i of that P.
            self.base = (np.arange(block) % batch) * k
            self.flat = np.empty(block, dtype=np.intp)
            self.pred = np.empty(block, dtype=np.intp)
        self.steps: dict[int, Callable[..., tuple[float, int]]] = {}

    def epoch(self, perm: np.ndarray, lr: float, row_stats: np.ndarray) -> tuple[float, int]:
        """One pass over the rows in the order ``perm``.

        Writes each row's loss statistic into ``row_stats`` (epoch order) and
        returns the summed L2 penalty (times rows) and the correctly classified rows.
        """
        n, batch, block, steps = len(perm), self.batch, self.block, self.steps
        penalty, correct = 0.0, 0
        for b0 in range(0, n, block):
            r = min(block, n - b0)
            idx = perm[b0:b0 + r]
            Xblk = np.take(self.X, idx, axis=0, out=self.Xblk[:r], mode="clip")
            Yblk = np.take(self.Y, idx, axis=0, out=self.Yblk[:r], mode="clip")
            if self.softmax:
                self.eye.take(Yblk, axis=0, out=self.onehot[:r], mode="clip")
                np.add(self.base[:r], Yblk, out=self.flat[:r])
            for s in range(0, r, batch):
                e = min(s + batch, r)
                fn = steps.get(e - s) or self.step_for(e - s)
                l2_term, c = fn(Xblk[s:e], Yblk[s:e], s, e, row_stats[b0 + s:b0 + e])
                penalty += l2_term * (e - s)
                correct += c
                if self.clip_norm is not None:
                    clip_by_global_norm(self.grad, self.clip_norm)
                self.update(lr)
            if self.softmax and self.want_correct:
                correct += int(np.count_nonzero(self.pred[:r] == Yblk))
        return penalty, correct

    def step_for(self, m: int) -> Callable[..., tuple[float, int]]:
        """The step of ``m`` rows, made on first use (a run has at most two sizes: the batch and the last one)."""
        fn = self.steps[m] = self.make_step(m)
        return fn

    def make_step(self, m: int) -> Callable[..., tuple[float, int]]:
        """The step for ``m`` rows: :meth:`Network.step_views`'s operations in its order, into fixed buffers.

        The step does the forward and backward pass of rows ``s:e`` of the
        current block, leaves the gradient in ``self.grad`` and returns the L2
        term and, for heads other than softmax, the correct rows (softmax
        counts them per block). Everything the step touches is bound here
        once, as the closure's locals (CPython's cheapest names); a step is
        then its NumPy calls.
        """
        net, views, grad_views, l2 = self.net, self.views, self.grad_views, self.l2
        n_layers, acts, head = len(views), net.acts, net.head
        Zs = [Z[:m] for Z in self.Zs]
        hidden = list(zip(views[:-1], [a.forward for a in acts], Zs[:-1]))
        W_out, b_out = views[-1]
        P = Zs[-1]
        # Per layer, last first: (W, gW, gb, dA buffer, activation backward) -- no dA for the first layer.
        backward = [(views[i][0], *grad_views[i], self.dAs[i - 1][:m] if i else None,
                     acts[i - 1].backward if i else None) for i in range(n_layers - 1, -1, -1)]
        ones = self.ones[:m]
        dot, take_rows = np.dot, P.reshape(-1).take
        want_correct, task, softmax = self.want_correct, head.task, self.softmax
        if softmax:
            col, scale = self.col[:m], 1.0 / m
            flat, pred, onehot = self.flat, self.pred, self.onehot
            row_max, row_sum = np.maximum.reduce, np.add.reduce

        def step(Xb: np.ndarray, Yb: np.ndarray, s: int, e: int, stats: np.ndarray) -> tuple[float, int]:
            inputs = [Xb]
            A = Xb
            for (W, b), forward, Z in hidden:
                dot(A, W, out=Z)
                Z += b
                A = forward(Z)
                inputs.append(A)
            dot(A, W_out, out=P)
            np.add(P, b_out, out=P)
            correct = 0
            if softmax:
                # losses._softmax, _true_class_probability and _cross_entropy_delta, in place.
                row_max(P, axis=1, keepdims=True, out=col)
                np.subtract(P, col, out=P)
                np.exp(P, out=P)
                row_sum(P, axis=1, keepdims=True, out=col)
                np.divide(P, col, out=P)
                take_rows(flat[s:e], out=stats)
                if want_correct:
                    P.argmax(axis=1, out=pred[s:e])
                np.subtract(P, onehot[s:e], out=P)
                np.multiply(P, scale, out=P)
                dZ = P
            else:
                Q = head.forward(P)
                stats[...] = head.row_stat(Q, Yb)
                if want_correct:
                    correct = count_correct(task, Q, Yb)
                dZ = head.delta(Q, Yb)
            layer = n_layers
            for W, gW, gb, dA, backward_act in backward:
                layer -= 1
                dot(inputs[layer].T, dZ, out=gW)
                dot(ones, dZ, out=gb)
                if l2:
                    gW += l2 * W
                if dA is not None:
                    dot(dZ, W.T, out=dA)
                    dZ = backward_act(dA, inputs[layer])
            return (l2_penalty(views, l2) if l2 else 0.0), correct

        return step
