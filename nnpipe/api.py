"""``nnpipe.train``: the one entry point that trains, for every mode and every source.

The Keras-style front, the Prefect flows, the sweep and the benches all call
it. ``single`` runs in this process; the distributed modes are imported only
when asked for, so the core never needs Dask installed or running.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nnpipe.config import TrainConfig
from nnpipe.core.losses import TASK_HEADS
from nnpipe.core.network import NetworkSpec, init_params
from nnpipe.core.problem import Problem
from nnpipe.core.training import fit
from nnpipe.data.load import Splits
from nnpipe.model import Model
from nnpipe.results import Callback, FitResult


def build_spec(
    task: str,
    n_features: int,
    n_outputs: int,
    hidden: tuple[int, ...] | list[int],
    activation: str | tuple[str, ...] = "relu",
    dtype: str = "float32",
) -> NetworkSpec:
    """The network for a task: softmax for multiclass, one sigmoid unit for binary, identity for regression."""
    hidden = tuple(int(h) for h in hidden)
    acts = (activation,) * len(hidden) if isinstance(activation, str) else tuple(activation)
    head = TASK_HEADS[task]
    outputs = 1 if task == "binary" else n_outputs
    return NetworkSpec(n_features, hidden, acts, outputs, head=head, dtype=dtype)


def train(
    data: Splits | tuple[np.ndarray, np.ndarray],
    config: TrainConfig | None = None,
    *,
    spec: NetworkSpec | None = None,
    theta: np.ndarray | None = None,
    hidden: tuple[int, ...] | list[int] = (64, 32),
    activation: str = "relu",
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    callbacks: tuple[Callback, ...] | list[Callback] = (),
    client: Any = None,
    address: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> FitResult:
    """Train with ``config.mode`` (``single``, ``sync``, ``local-sgd`` or ``async``).

    Parameters
    ----------
    data : Splits, (X, Y), Source or PreparedSource
        A large source (:func:`nnpipe.sources.open_source`) is validated and
        split on the workers (``single``: in this process) with the default
        test/validation fractions; a :class:`~nnpipe.sources.prep.PreparedSource`
        is already validated and split. Either way the rows never pass through
        this process in the distributed modes. Otherwise:
        A split dataset (:func:`nnpipe.data.split_and_scale`): the network is
        built from its task and shape (``hidden``, ``activation``), validation
        comes from its validation part, and ``FitResult.model`` is a servable
        :class:`~nnpipe.model.Model` that predicts on raw features. Or bare
        arrays: ``X`` of shape (n_samples, n_features), scaled, and ``Y``
        encoded for the head; then ``spec`` is required.
    config : TrainConfig, optional
        Defaults to ``TrainConfig()``.
    spec : NetworkSpec, optional
        The network, for bare arrays.
    theta : ndarray of shape (n_params,), optional
        Starting parameters; default: initialised from ``config.seed``.
    validation : (X_val, Y_val), optional
        For bare arrays; evaluated after every epoch (early stopping).
    callbacks : sequence of callable
        ``cb(epoch, logs)`` after every epoch (epoch-equivalent in the distributed modes).
    client : distributed.Client, optional
    address : str, optional
        The Dask cluster for the distributed modes; with neither,
        ``DASK_SCHEDULER_ADDRESS`` if set, else a local cluster for this call.
    metadata : dict, optional
        Stored in the servable model (``Model.metadata``).

    Returns
    -------
    FitResult
        The same type in every mode; ``model`` is set when ``data`` is a dataset.

    Examples
    --------
    A dataset, split and scaled: the network comes from its task and shape, and
    the result carries a servable model that takes raw rows.

    >>> import nnpipe
    >>> splits = nnpipe.split_and_scale(nnpipe.load_dataset("iris"), seed=0)
    >>> result = nnpipe.train(splits, nnpipe.TrainConfig(epochs=5, seed=0), hidden=(8,))
    >>> result.epochs_run, sorted(result.history)[:3]
    (5, ['lr', 'train/accuracy', 'train/loss'])
    >>> result.model.predict(splits.raw_test[:4]).shape
    (4,)

    Bare arrays need the network; here a binary task, one sigmoid output:

    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(128, 3))
    >>> Y = (X[:, :1] > 0).astype(np.float64)
    >>> spec = nnpipe.NetworkSpec(3, (8,), ("relu",), 1, head="sigmoid")
    >>> result = nnpipe.train((X, Y), nnpipe.TrainConfig(epochs=3, optimizer="adam", lr=1e-2), spec=spec)
    >>> result.theta.shape
    (41,)

    The same call trains on a Dask cluster (``address=``, ``client=``,
    ``DASK_SCHEDULER_ADDRESS``, or a local cluster of ``workers`` processes):

    >>> config = nnpipe.TrainConfig(mode="local-sgd", workers=2, sync_every=5, epochs=2, seed=0)
    >>> result = nnpipe.train(splits, config, hidden=(8,))
    >>> result.info["workers"], result.epochs_run
    (2, 2)
    """
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    from nnpipe.target import call_started

    with call_started():  # config.until's seconds count from here (or from the nnpipe command's start)
        return _train(data, config, spec=spec, theta=theta, hidden=hidden, activation=activation,
                      validation=validation, callbacks=callbacks, client=client, address=address, metadata=metadata)


def _train(data: Any, config: TrainConfig, *, spec: NetworkSpec | None, theta: np.ndarray | None,
           hidden: tuple[int, ...] | list[int], activation: str, validation: tuple | None, callbacks: Any,
           client: Any, address: str | None, metadata: dict[str, Any] | None) -> FitResult:
    if _is_source(data):  # a large source: the rows stay where they are read
        if validation is not None:
            raise TypeError("validation comes from the source's split when data is a source")
        return _train_source(data, config, spec=spec, theta=theta, hidden=hidden, activation=activation,
                             callbacks=callbacks, client=client, address=address, metadata=metadata)
    model = None
    if isinstance(data, Splits):
        if spec is not None or validation is not None:
            raise TypeError("spec and validation come from the dataset when data is a Splits")
        model, data, validation = _prepare(data, config, hidden, activation, metadata)
        spec = model.spec
    elif spec is None:
        raise TypeError("train(data=(X, Y), ...) needs spec=NetworkSpec(...)")
    elif not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"data must be a Splits or an (X, Y) pair, got {type(data).__name__}")
    _check_target(config, spec.head, validation is not None)
    problem = Problem(spec, _initial(spec, config, theta), data[0], data[1], validation)
    if config.mode == "single":
        result = fit(problem, config, callbacks=callbacks)
    else:
        from nnpipe.distributed import fit_distributed

        result = fit_distributed(problem, config, callbacks=callbacks, client=client, address=address)
    if model is not None:
        model.theta = result.theta
        result.model = model
    return result


def class_shares(y: np.ndarray, classes: np.ndarray | None) -> np.ndarray | None:
    """Each class's share of the rows ``y`` (original labels), in ``classes`` order; None for regression."""
    if classes is None or len(y) == 0:
        return None
    labels = np.asarray(y).reshape(len(y))
    return np.array([np.count_nonzero(labels == c) for c in classes], dtype=np.float64) / len(labels)


def _prepare(splits: Splits, config: TrainConfig, hidden: tuple[int, ...] | list[int], activation: str,
             metadata: dict[str, Any] | None) -> tuple[Model, tuple[np.ndarray, np.ndarray], tuple | None]:
    """The servable model (untrained) and the encoded training and validation pairs."""
    spec = splits_spec(splits, hidden, activation, config.dtype)
    # The model is built first so that training and serving encode targets the same way.
    model = Model(spec, init_params(spec, 0), classes=splits.classes, mean=splits.mean, scale=splits.scale,
                  feature_names=splits.feature_names, metadata=metadata,
                  target_mean=splits.target_mean, target_scale=splits.target_scale,
                  class_freq=class_shares(splits.y_train, splits.classes))
    validation = None
    if len(splits.y_val):
        validation = (splits.X_val.astype(spec.dtype), model.encode_targets(splits.y_val))
    return model, (splits.X_train.astype(spec.dtype), model.encode_targets(splits.y_train)), validation



def _is_source(data: Any) -> bool:
    from nnpipe.sources.location import Source
    from nnpipe.sources.prep import PreparedSource

    return isinstance(data, (Source, PreparedSource))


def splits_spec(splits: Splits, hidden: tuple[int, ...] | list[int], activation: str = "relu",
                dtype: str = "float32") -> NetworkSpec:
    """The network for an in-memory split (its task, features and classes or target columns)."""
    n_out = len(splits.classes) if splits.classes is not None else (
        1 if splits.y_train.ndim == 1 else splits.y_train.shape[1]
    )
    return build_spec(splits.task, splits.X_train.shape[1], n_out, hidden, activation, dtype)


def source_spec(prepared: Any, hidden: tuple[int, ...] | list[int], activation: str = "relu",
                dtype: str = "float32") -> NetworkSpec:
    """The network for a prepared source (its task, features and classes)."""
    n_out = len(prepared.classes) if prepared.classes is not None else 1
    return build_spec(prepared.task, len(prepared.source.features), n_out, hidden, activation, dtype)


def _train_source(data: Any, config: TrainConfig, *, spec: NetworkSpec | None, theta: np.ndarray | None,
                  hidden: tuple[int, ...] | list[int], activation: str, callbacks: Any, client: Any,
                  address: str | None, metadata: dict[str, Any] | None) -> FitResult:
    """A large source: prepared where it is read, trained in this process (single) or on the cluster."""
    from nnpipe.sources.prep import VAL, PreparedSource, prepare

    if config.mode != "single":
        from nnpipe.distributed.cluster import connect
        from nnpipe.distributed.frames import cluster_runner, fit_prepared

        with connect(address=address, client=client, workers=config.workers) as c:  # one cluster for both
            if not isinstance(data, PreparedSource):
                data = prepare(data, cluster_runner(c), seed=config.seed)
            spec = spec or source_spec(data, hidden, activation, config.dtype)
            _check_target(config, spec.head, data.rows(VAL) > 0)
            result = fit_prepared(data, spec, _initial(spec, config, theta), config, callbacks=callbacks, client=c)
    else:
        from nnpipe.sources.fit import fit_single_source

        if not isinstance(data, PreparedSource):
            data = prepare(data, seed=config.seed)
        spec = spec or source_spec(data, hidden, activation, config.dtype)
        _check_target(config, spec.head, data.rows(VAL) > 0)
        result = fit_single_source(data, spec, _initial(spec, config, theta), config, callbacks)
    result.model = data.model(spec, result.theta, metadata)
    result.info["source"] = data.source.describe()
    return result


def _check_target(config: TrainConfig, head: str, has_validation: bool) -> None:
    """``config.until`` names a metric this run logs (before any training starts)."""
    target = config.target()
    if target is not None:
        from nnpipe.core.losses import get_head

        target.check_task(get_head(head).task, has_validation)


def _initial(spec: NetworkSpec, config: TrainConfig, theta: np.ndarray | None) -> np.ndarray:
    if theta is not None:
        return theta
    return init_params(spec, np.random.default_rng(np.random.SeedSequence(config.seed).spawn(1)[0]))
