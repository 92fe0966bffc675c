"""``nnpipe serve``: a model server that follows a registry alias.

It answers MLflow's scoring protocol with the version the alias (``champion``)
names, notices a move within seconds, loads and smoke-tests the new version
beside the old one and swaps atomically; a version that fails is refused while
the old one keeps serving. Optionally a second alias scores every request in
shadow, and live inputs are compared with the training statistics (drift).

Its modules: :mod:`.config` (the settings), :mod:`.protocol` (MLflow's request
bodies and answers), :mod:`.served` (one loaded, smoke-tested version),
:mod:`.watcher` (follow an alias, swap atomically), :mod:`.periodic` (the
background-thread shape), :mod:`.shadow` (a challenger scoring off the response
path), :mod:`.drift` (live inputs against the training statistics),
:mod:`.metrics` (Prometheus), :mod:`.reporter` (gauges and MLflow metrics on a
timer), :mod:`.app` (the Starlette routes) and :mod:`.runner` (uvicorn, workers).

Layer: above :mod:`nnpipe.tracking` (through which it reads the registry and
loads verified models), beside the CLI; it never imports Prefect or Dask.

Examples
--------
>>> from nnpipe.serve import ServeConfig, create_app      # doctest: +SKIP
>>> app = create_app(ServeConfig("nnpipe-iris"))          # any ASGI server can run it
"""

from nnpipe.serve.app import Server, create_app
from nnpipe.serve.config import ServeConfig
from nnpipe.serve.drift import DriftMonitor
from nnpipe.serve.runner import run
from nnpipe.serve.served import ServedVersion, SmokeFailed
from nnpipe.serve.watcher import AliasCallback, AliasWatcher

__all__ = ["AliasCallback", "AliasWatcher", "DriftMonitor", "ServeConfig", "ServedVersion", "Server", "SmokeFailed",
           "create_app", "run"]
