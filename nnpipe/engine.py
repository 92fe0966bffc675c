"""One entry point for every training mode.

``single`` runs in this process; the distributed modes are imported only when
asked for, so the core never needs Dask to be installed or running.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nnpipe.config import TrainConfig
from nnpipe.network import NetworkSpec
from nnpipe.training import Callback, FitResult, fit


def train(
    spec: NetworkSpec,
    theta: np.ndarray,
    X: np.ndarray,
    Y: np.ndarray,
    config: TrainConfig,
    *,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    callbacks: tuple[Callback, ...] | list[Callback] = (),
    client: Any = None,
    address: str | None = None,
) -> FitResult:
    """Train with ``config.mode``; see :func:`nnpipe.training.fit` for the arguments.

    ``client`` (a ``distributed.Client``) or ``address`` (a scheduler address)
    select the Dask cluster for the distributed modes; with neither,
    ``DASK_SCHEDULER_ADDRESS`` is used if set, else a local cluster is started
    for this call and closed afterwards.
    """
    if config.mode == "single":
        return fit(spec, theta, X, Y, config, validation=validation, callbacks=callbacks)
    from nnpipe.distributed import fit_distributed

    return fit_distributed(
        spec, theta, X, Y, config, validation=validation, callbacks=callbacks, client=client, address=address
    )
