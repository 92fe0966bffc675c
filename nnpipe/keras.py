"""A Keras-style front for people coming from Keras.

``Sequential`` / ``Dense`` / ``compile`` / ``fit`` / ``evaluate`` / ``predict``
with Keras' names and defaults, built on the same core as everything else.
``fit`` also takes nnpipe's distributed options (``mode``, ``workers``,
``client``, ``address``, ``sync_every``, ``max_staleness``).
"""

from __future__ import annotations

import sys
from dataclasses import fields
from typing import Any

import numpy as np

from nnpipe.config import TrainConfig
from nnpipe.core.evaluation import evaluate_arrays
from nnpipe.core.losses import get_head, head_name
from nnpipe.core.network import Network, NetworkSpec, init_params
from nnpipe.data.checks import check_features, check_lengths
from nnpipe.data.targets import decode_predictions, encode_targets, fit_classes

_KERAS_ACTIVATIONS = {None: "identity", "linear": "identity"}
_OUTPUT_ACTIVATION = {"softmax": "softmax", "sigmoid": "sigmoid", "identity": "identity"}


class Dense:
    """A fully connected layer: ``units`` outputs and an activation name.

    Examples
    --------
    >>> Dense(8, input_dim=4, activation="relu").units
    8
    >>> Dense(3, activation="linear").activation    # Keras' name for no activation
    'identity'
    """

    def __init__(self, units: int, activation: str | None = None, input_dim: int | None = None,
                 input_shape: tuple[int] | None = None, kernel_initializer: str = "glorot_uniform"):
        if int(units) < 1:
            raise ValueError(f"Dense units must be >= 1, got {units!r}")
        self.units = int(units)
        self.activation = _KERAS_ACTIVATIONS.get(activation, activation)
        self.input_dim = input_dim if input_dim is not None else (input_shape[0] if input_shape else None)
        # Keras' default for every Dense layer, whatever its activation.
        self.kernel_initializer = kernel_initializer


class History:
    """Keras' ``History``: ``history.history['loss']`` and friends."""

    def __init__(self, history: dict[str, list[float]]):
        keys = {"train/loss": "loss", "train/accuracy": "accuracy", "val/loss": "val_loss",
                "val/accuracy": "val_accuracy", "lr": "learning_rate"}
        self.history = {keys[k]: v for k, v in history.items() if k in keys}
        self.epoch = list(range(len(self.history.get("loss", []))))


class Sequential:
    """A stack of :class:`Dense` layers trained with :meth:`fit`.

    Examples
    --------
    >>> from nnpipe import Dense, Sequential, load_dataset, split_and_scale
    >>> splits = split_and_scale(load_dataset("iris"), seed=0)
    >>> model = Sequential([Dense(8, input_dim=4, activation="relu"), Dense(3, activation="softmax")], seed=0)
    >>> model.compile(loss="sparse_categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    >>> history = model.fit(splits.X_train, splits.y_train, epochs=100, batch_size=8, verbose=0)
    >>> len(history.history["loss"])
    100
    >>> loss, accuracy = model.evaluate(splits.X_test, splits.y_test)
    >>> bool(accuracy > 0.8)
    True
    >>> model.predict(splits.X_test[:2]).shape          # class probabilities
    (2, 3)
    >>> model.predict_classes(splits.X_test[:2]).shape
    (2,)

    ``fit`` also trains on a Dask cluster (``address=``, ``client=``,
    ``DASK_SCHEDULER_ADDRESS``, or a local cluster of ``workers`` processes):

    >>> history = model.fit(splits.X_train, splits.y_train, epochs=2, batch_size=8, verbose=0,
    ...                     mode="local-sgd", workers=2, sync_every=5)
    >>> len(history.history["loss"])
    2
    """

    def __init__(self, layers: list[Dense] | None = None, seed: int | None = None):
        self.layers: list[Dense] = []
        self.seed = seed
        self.spec: NetworkSpec | None = None
        self.theta: np.ndarray | None = None
        self.classes: np.ndarray | None = None
        self._compiled: dict[str, Any] | None = None
        for layer in layers or []:
            self.add(layer)

    def add(self, layer: Dense) -> None:
        if not self.layers and layer.input_dim is None:
            raise ValueError("the first Dense layer needs input_dim (the number of features)")
        self.layers.append(layer)

    def compile(self, loss: str, optimizer: str = "rmsprop", metrics: list[str] | None = None,
                learning_rate: float | None = None, dtype: str = "float32") -> None:
        """Choose the loss (which fixes the output head), optimizer and metrics."""
        if not self.layers:
            raise ValueError("add at least one Dense layer before compile()")
        head = head_name(loss)
        last = self.layers[-1].activation
        if _OUTPUT_ACTIVATION.get(last) != head:
            raise ValueError(
                f"loss {loss!r} needs a {head!r} output layer, but the last Dense has activation {last!r}"
            )
        if head == "sigmoid" and self.layers[-1].units != 1:
            raise ValueError(f"binary_crossentropy needs Dense(1, activation='sigmoid'), got {self.layers[-1].units} units")
        hidden = self.layers[:-1]
        self.spec = NetworkSpec(
            n_inputs=self.layers[0].input_dim,
            hidden=tuple(l.units for l in hidden),
            activations=tuple(l.activation for l in hidden),
            n_outputs=self.layers[-1].units,
            head=head,
            dtype=dtype,
        )
        self._compiled = {"loss": loss, "optimizer": optimizer, "metrics": list(metrics or []), "lr": learning_rate}
        self.theta = None

    def _labels(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y)
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            row = int(np.argwhere(~np.isfinite(y))[0][0])
            raise ValueError(f"y row {row} is not finite ({y.reshape(len(y), -1)[row].tolist()!r}); labels must be finite")
        if self._compiled["loss"] == "categorical_crossentropy" and y.ndim == 2:
            return y.argmax(axis=1)  # one-hot rows to class indices
        return y

    def _targets(self, y: np.ndarray) -> np.ndarray:
        return encode_targets(self._labels(y), self.spec.head, self.classes, self.spec.dtype)

    def fit(self, x: np.ndarray, y: np.ndarray, epochs: int = 1, batch_size: int | None = 32,
            verbose: int = 1, validation_split: float = 0.0,
            validation_data: tuple[np.ndarray, np.ndarray] | None = None,
            callbacks: list | None = None, seed: int | None = None, **options: Any) -> History:
        """Train; ``options`` are :class:`~nnpipe.config.TrainConfig` fields (``mode``, ``workers``, ...)
        plus ``client`` / ``address`` for the Dask cluster."""
        if self._compiled is None:
            raise RuntimeError("call compile() before fit()")
        client = options.pop("client", None)
        address = options.pop("address", None)
        known = {f.name for f in fields(TrainConfig)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"fit() got unknown option(s) {unknown}")
        seed = seed if seed is not None else self.seed
        seed = int(np.random.SeedSequence().entropy % 2**31) if seed is None else seed
        X = check_features(x, "x", self.spec.n_inputs, dtype=self.spec.dtype)
        labels = self._labels(y)
        check_lengths(x=X, y=labels)
        if not 0 <= validation_split < 1:
            raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}")
        if validation_split and validation_data is None:
            # Keras takes the last fraction of the rows, before any shuffling.
            cut = int(len(X) * (1 - validation_split))
            validation_data = (X[cut:], labels[cut:])
            X, labels = X[:cut], labels[:cut]
        if self.theta is None:
            if self.spec.head == "softmax":
                integer = np.issubdtype(labels.dtype, np.integer)
                in_range = integer and labels.min() >= 0 and labels.max() < self.spec.n_outputs
                self.classes = np.arange(self.spec.n_outputs) if in_range else fit_classes(labels)
            elif self.spec.head == "sigmoid":
                self.classes = fit_classes(labels) if not np.isin(labels, (0, 1)).all() else np.array([0, 1])
            if self.classes is not None and self.spec.head == "softmax" and len(self.classes) != self.spec.n_outputs:
                raise ValueError(
                    f"the output layer has {self.spec.n_outputs} units but y has {len(self.classes)} classes"
                )
            self.theta = init_params(self.spec, seed, init=tuple(l.kernel_initializer for l in self.layers))
        config = TrainConfig(
            optimizer=self._compiled["optimizer"], lr=self._compiled["lr"], epochs=epochs,
            batch_size=32 if batch_size is None else batch_size, seed=seed, dtype=self.spec.dtype, **options,
        )
        validation = None
        if validation_data is not None:
            Xv, yv = validation_data
            Xv = check_features(Xv, "validation x", self.spec.n_inputs, dtype=self.spec.dtype)
            check_lengths(**{"validation x": Xv, "validation y": yv})
            validation = (Xv, self._targets(yv))
        cbs = list(callbacks or [])
        if verbose:
            cbs.append(_print_epoch(epochs))
        from nnpipe.api import train  # api imports the data layer; Sequential users may never need it

        result = train((X, self._targets(labels)), config, spec=self.spec, theta=self.theta, validation=validation,
                       callbacks=cbs, client=client, address=address)
        self.theta = result.theta
        return History(result.history)

    def evaluate(self, x: np.ndarray, y: np.ndarray, verbose: int = 0, batch_size: int | None = None):
        """Loss, or ``[loss, accuracy]`` when compiled with ``metrics=['accuracy']``."""
        self._require_fitted()
        scores = evaluate_arrays(Network(self.spec), self.theta, np.asarray(x, dtype=self.spec.dtype),
                                 self._targets(y))
        if verbose:
            print(" - ".join(f"{k}: {v:.4f}" for k, v in scores.items()))
        if "accuracy" in self._compiled["metrics"] and "accuracy" in scores:
            return [scores["loss"], scores["accuracy"]]
        return scores["loss"]

    def predict(self, x: np.ndarray, verbose: int = 0, batch_size: int | None = None) -> np.ndarray:
        """Head outputs, as Keras returns them (probabilities for classification)."""
        self._require_fitted()
        return Network(self.spec).forward(self.theta, check_features(x, "x", self.spec.n_inputs, dtype=self.spec.dtype))

    def predict_classes(self, x: np.ndarray) -> np.ndarray:
        """Original labels for ``x``."""
        return decode_predictions(self.predict(x), self.spec.head, self.classes)

    def _require_fitted(self) -> None:
        if self.theta is None:
            raise RuntimeError("the model is not trained yet: call fit() first")

    def summary(self) -> None:
        spec = self.spec
        if spec is None:
            raise RuntimeError("call compile() first")
        rows = [(f"dense_{i}", b, a * b + b) for i, (a, b) in enumerate(zip(spec.sizes[:-1], spec.sizes[1:]))]
        for name, units, n in rows:
            print(f"{name:<10} units={units:<6} params={n}")
        print(f"total params: {spec.n_params}")


def _print_epoch(epochs: int):
    def show(epoch: int, logs: dict[str, float]) -> None:
        parts = [f"{k.replace('train/', '').replace('/', '_')}: {v:.4f}" for k, v in logs.items()
                 if k.startswith(("train/loss", "train/accuracy", "val/"))]
        print(f"Epoch {epoch + 1}/{epochs} - " + " - ".join(parts), file=sys.stdout, flush=True)
    return show


__all__ = ["Dense", "History", "Sequential", "get_head"]
