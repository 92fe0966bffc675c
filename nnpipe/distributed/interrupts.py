"""Worker processes of a local cluster ignore Ctrl-C; the driver that started them handles it.

A terminal sends Ctrl-C's SIGINT to the whole foreground process group, and
the worker processes of a :func:`~nnpipe.distributed.cluster.start_local_cluster`
cluster are in it. Each then died on its own, in the middle of a task, and
printed two tracebacks (``KeyboardInterrupt`` from its event loop, then a
``TypeError`` from its nanny) over the driver's one-line message, while the
driver was still closing its runs on them. The driver already turns Ctrl-C
into a clean stop and closes the cluster, which ends the workers; so they
ignore SIGINT, as a process started in the background does. Loaded in each
worker process as a Dask preload (``dask_setup``).
"""

from __future__ import annotations

import signal
import threading
from typing import Any


def dask_setup(worker: Any) -> None:
    """Dask's preload hook: ignore SIGINT in this worker process (its main thread runs the event loop)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
