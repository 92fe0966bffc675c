"""From split data to a trained :class:`~nnpipe.model.Model`: the one call every front uses.

The README's command, the Prefect flow and the sweep all train through
:func:`train_model`, so the spec, the target encoding and what travels inside
the saved model are decided in one place.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nnpipe.config import TrainConfig
from nnpipe.data import Splits
from nnpipe.engine import train
from nnpipe.losses import TASK_HEADS
from nnpipe.model import Model
from nnpipe.network import NetworkSpec, init_params
from nnpipe.training import Callback, FitResult


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


def train_model(
    splits: Splits,
    config: TrainConfig,
    hidden: tuple[int, ...] | list[int] = (64, 32),
    activation: str = "relu",
    *,
    callbacks: tuple[Callback, ...] | list[Callback] = (),
    client: Any = None,
    address: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> tuple[Model, FitResult]:
    """Train on ``splits`` with ``config`` (any mode) and wrap the result as a servable model.

    Returns
    -------
    model : Model
        Carries the scaler statistics and label mapping, so it predicts on raw features.
    result : FitResult
    """
    n_out = len(splits.classes) if splits.classes is not None else (
        1 if splits.y_train.ndim == 1 else splits.y_train.shape[1]
    )
    spec = build_spec(splits.task, splits.X_train.shape[1], n_out, hidden, activation, config.dtype)
    # The model is built first so that training and serving encode targets the same way.
    model = Model(spec, init_params(spec, 0), classes=splits.classes, mean=splits.mean, scale=splits.scale,
                  feature_names=splits.feature_names, metadata=metadata,
                  target_mean=splits.target_mean, target_scale=splits.target_scale)
    encode = model.encode_targets
    theta = init_params(spec, np.random.default_rng(np.random.SeedSequence(config.seed).spawn(1)[0]))
    validation = None
    if len(splits.y_val):
        validation = (splits.X_val.astype(spec.dtype), encode(splits.y_val))
    result = train(
        spec, theta, splits.X_train.astype(spec.dtype), encode(splits.y_train), config,
        validation=validation, callbacks=callbacks, client=client, address=address,
    )
    model.theta = result.theta
    return model, result
