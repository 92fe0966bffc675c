"""``nnpipe serve``: a model server that follows a registry alias.

It answers MLflow's scoring protocol with the version the alias (``champion``)
names, notices a move within seconds, loads and smoke-tests the new version
beside the old one and swaps atomically; a version that fails is refused while
the old one keeps serving. Optionally a second alias scores every request in
shadow, and live inputs are compared with the training statistics (drift).

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
