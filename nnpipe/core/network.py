"""A dense network as a spec plus one flat parameter vector ``theta``.

Every layer's ``W`` (fan_in, fan_out) and ``b`` (fan_out,) is a view into
``theta``, so averaging, shipping to workers, checkpointing and gradient checks
each work on a single array. The forward and backward passes write gradients
straight into the matching views of a flat ``grad`` buffer.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from nnpipe.core.activations import get_activation
from nnpipe.core.losses import get_head, head_name

DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class NetworkSpec:
    """Architecture of a dense network.

    Parameters
    ----------
    n_inputs : int
        Number of input features.
    hidden : tuple of int
        Width of each hidden layer (may be empty).
    activations : tuple of str
        One activation name per hidden layer.
    n_outputs : int
        Width of the output layer.
    head : str
        ``"softmax"``, ``"sigmoid"`` or ``"identity"`` (see :mod:`nnpipe.core.losses`).
    dtype : str
        ``"float32"`` (default) or ``"float64"``.
    """

    n_inputs: int
    hidden: tuple[int, ...]
    activations: tuple[str, ...]
    n_outputs: int
    head: str = "softmax"
    dtype: str = "float32"
    sizes: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        acts = self.activations
        if isinstance(acts, str):
            acts = (acts,) * len(self.hidden)
        object.__setattr__(self, "activations", tuple(acts))
        object.__setattr__(self, "head", head_name(self.head))
        for name, value in (("n_inputs", self.n_inputs), ("n_outputs", self.n_outputs)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}")
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden layer sizes must be >= 1, got {self.hidden!r}")
        if len(self.activations) != len(self.hidden):
            raise ValueError(
                f"need one activation per hidden layer: {len(self.hidden)} layers "
                f"{self.hidden!r} but activations {self.activations!r}"
            )
        for a in self.activations:
            get_activation(a)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        object.__setattr__(self, "sizes", (int(self.n_inputs), *self.hidden, int(self.n_outputs)))

    @property
    def n_params(self) -> int:
        return sum(a * b + b for a, b in zip(self.sizes[:-1], self.sizes[1:]))

    @property
    def task(self) -> str:
        return get_head(self.head).task

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("sizes")
        d["hidden"] = list(self.hidden)
        d["activations"] = list(self.activations)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NetworkSpec":
        return cls(
            n_inputs=d["n_inputs"],
            hidden=tuple(d["hidden"]),
            activations=tuple(d["activations"]),
            n_outputs=d["n_outputs"],
            head=d.get("head", "softmax"),
            dtype=d.get("dtype", "float32"),
        )


def layer_views(spec: NetworkSpec, flat: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-layer ``(W, b)`` views into a flat vector laid out for ``spec``.

    Writing to a view writes to ``flat``: this is how gradients land in one buffer.
    """
    if flat.shape != (spec.n_params,):
        raise ValueError(
            f"flat parameter vector has shape {flat.shape}, expected ({spec.n_params},) for {spec}"
        )
    views = []
    offset = 0
    for fan_in, fan_out in zip(spec.sizes[:-1], spec.sizes[1:]):
        W = flat[offset : offset + fan_in * fan_out].reshape(fan_in, fan_out)
        offset += fan_in * fan_out
        b = flat[offset : offset + fan_out]
        offset += fan_out
        views.append((W, b))
    return views


INITIALIZERS = ("auto", "he_normal", "he_uniform", "glorot_uniform", "glorot_normal")


def init_params(
    spec: NetworkSpec,
    seed: int | np.random.Generator | None = 0,
    init: str | tuple[str, ...] = "auto",
) -> np.ndarray:
    """Initial ``theta``: zero biases and weights drawn per layer.

    ``init="auto"`` uses He (normal) for relu-like layers and Glorot (uniform)
    otherwise; a name, or one name per layer (output layer last), overrides it
    (the Keras front passes ``glorot_uniform``, Keras' default for ``Dense``).
    The same seed gives the same weights bit for bit; draws are made in float64
    and then cast, so float32 and float64 networks start from the same values.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    n_layers = len(spec.sizes) - 1
    inits = (init,) * n_layers if isinstance(init, str) else tuple(init)
    if len(inits) != n_layers or any(i not in INITIALIZERS for i in inits):
        raise ValueError(f"init must be one of {INITIALIZERS} or one per layer ({n_layers}), got {init!r}")
    theta = np.zeros(spec.n_params, dtype=np.float64)
    acts = list(spec.activations) + [None]
    for (W, _b), act, how in zip(layer_views(spec, theta), acts, inits):
        fan_in, fan_out = W.shape
        if how == "auto":
            he = act is not None and get_activation(act).he_init
            how = "he_normal" if he else "glorot_uniform"
        family, dist = how.split("_")
        var = 2.0 / fan_in if family == "he" else 2.0 / (fan_in + fan_out)
        if dist == "normal":
            W[...] = rng.normal(0.0, np.sqrt(var), size=W.shape)
        else:
            limit = np.sqrt(3.0 * var)
            W[...] = rng.uniform(-limit, limit, size=W.shape)
    return theta.astype(spec.dtype)


class Network:
    """Forward and backward passes for a :class:`NetworkSpec`.

    Holds only the resolved activation and head functions; parameters are
    always passed in, so one ``Network`` serves any ``theta`` of its layout.
    """

    def __init__(self, spec: NetworkSpec):
        self.spec = spec
        self.acts = [get_activation(a) for a in spec.activations]
        self.head = get_head(spec.head)
        self.dtype = np.dtype(spec.dtype)
        self._ones = np.ones(0, dtype=self.dtype)

    def _ones_for(self, n: int) -> np.ndarray:
        # Bias gradients as ones @ dZ: a gemv, cheaper than a reduction along axis 0.
        if len(self._ones) < n:
            self._ones = np.ones(n, dtype=self.dtype)
        return self._ones[:n]

    def views(self, flat: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        return layer_views(self.spec, flat)

    def forward(self, theta: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Predictions ``P`` of shape (n_samples, n_outputs) for inputs ``X`` (n_samples, n_features)."""
        A = X
        views = self.views(theta)
        for (W, b), act in zip(views[:-1], self.acts):
            A = act.forward(np.add(A @ W, b))
        W, b = views[-1]
        return self.head.forward(np.add(A @ W, b))

    def loss(self, theta: np.ndarray, X: np.ndarray, Y: np.ndarray, l2: float = 0.0) -> float:
        """Mean loss over the rows of ``X`` plus ``0.5 * l2 * sum(W**2)``."""
        value = self.head.loss(self.forward(theta, X), Y)
        if l2:
            value += l2_penalty(self.views(theta), l2)
        return value

    def loss_and_grad(
        self,
        theta: np.ndarray,
        X: np.ndarray,
        Y: np.ndarray,
        l2: float = 0.0,
        grad: np.ndarray | None = None,
    ) -> tuple[float, np.ndarray]:
        """Mean loss and its gradient with respect to ``theta``.

        Parameters
        ----------
        theta : ndarray of shape (n_params,)
        X : ndarray of shape (n_samples, n_features)
        Y : ndarray
            Encoded targets (see :mod:`nnpipe.core.losses`).
        l2 : float
            Weight decay on the weights (not the biases).
        grad : ndarray of shape (n_params,), optional
            Buffer to write the gradient into (saves an allocation per step).

        Returns
        -------
        loss : float
        grad : ndarray of shape (n_params,)
        """
        if grad is None:
            grad = np.empty_like(theta)
        loss, _ = self.step_views(self.views(theta), self.views(grad), X, Y, l2)
        return loss, grad

    def step_views(
        self,
        views: list[tuple[np.ndarray, np.ndarray]],
        grad_views: list[tuple[np.ndarray, np.ndarray]],
        X: np.ndarray,
        Y: np.ndarray,
        l2: float = 0.0,
        want_correct: bool = False,
        row_stats: np.ndarray | None = None,
    ) -> tuple[float, int]:
        """Forward and backward pass on precomputed views (the training hot path).

        Writes the gradient into ``grad_views`` and returns the batch's mean loss
        and, when ``want_correct``, the number of correctly classified rows.

        With ``row_stats`` (shape (n_samples,)) each row's loss statistic is
        written there instead and the returned loss is only the L2 term: the
        caller turns a whole epoch of rows into its loss with one
        ``head.loss_from_stats`` call, saving a log and a reduction per step
        (a tenth of a step for small networks).
        """
        # np.dot rather than @: both call BLAS gemm, but dot's dispatch is about
        # 0.5 us cheaper, which shows for small layers and batches.
        inputs = [X]  # the input of every layer
        A = X
        for (W, b), act in zip(views[:-1], self.acts):
            Z = np.dot(A, W)
            Z += b
            A = act.forward(Z)
            inputs.append(A)
        W, b = views[-1]
        Z = np.dot(A, W)
        Z += b
        P = self.head.forward(Z)
        if row_stats is None:
            loss = self.head.loss(P, Y)
        else:
            row_stats[...] = self.head.row_stat(P, Y)
            loss = 0.0
        correct = count_correct(self.head.task, P, Y) if want_correct else 0
        dZ = self.head.delta(P, Y)
        ones = self._ones_for(len(X))
        for layer in range(len(views) - 1, -1, -1):
            W, _ = views[layer]
            gW, gb = grad_views[layer]
            np.dot(inputs[layer].T, dZ, out=gW)
            np.dot(ones, dZ, out=gb)
            if l2:
                gW += l2 * W
            if layer:
                dA = np.dot(dZ, W.T)
                dZ = self.acts[layer - 1].backward(dA, inputs[layer])
        if l2:
            loss += l2_penalty(views, l2)
        return loss, correct


def l2_penalty(views: list[tuple[np.ndarray, np.ndarray]], l2: float) -> float:
    """``0.5 * l2 * sum(W**2)`` over the layers' weights (biases are not decayed)."""
    return 0.5 * l2 * sum(float(np.dot(W.ravel(), W.ravel())) for W, _ in views)


def count_correct(task: str, P: np.ndarray, Y: np.ndarray) -> int:
    """Rows whose predicted class matches the encoded target (0 for regression)."""
    if task == "multiclass":
        return int(np.count_nonzero(P.argmax(axis=1) == Y))
    if task == "binary":
        return int(np.count_nonzero((P > 0.5) == (Y > 0.5)))
    return 0
