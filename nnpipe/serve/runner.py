"""Start the server: uvicorn with ``workers`` processes, Prometheus multiprocess files, graceful SIGTERM.

uvicorn (already installed with MLflow, which serves with it too) runs the
Starlette app. SIGTERM or Ctrl-C stops accepting connections, lets in-flight
requests finish (up to ``graceful`` seconds), then exits 0.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

from nnpipe.serve.config import ENV_CONFIG, ServeConfig
from nnpipe.serve.metrics import ENV_DIR

APP = "nnpipe.serve.app:app_from_env"


def setup_logging() -> None:
    """``nnpipe.serve`` lines (swaps, refusals) on stderr, with the worker's pid; in every worker process."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [pid %(process)d] %(message)s"))
    logger = logging.getLogger("nnpipe.serve")
    if not logger.handlers:
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def run(config: ServeConfig, host: str = "127.0.0.1", port: int = 5000, workers: int = 1,
        access_log: bool = False, graceful: float = 30.0) -> None:
    """Serve ``config`` until SIGTERM / Ctrl-C (blocks).

    Parameters
    ----------
    config : ServeConfig
    host, port : str, int
        Where to listen (port 0: any free port; the log line says which).
    workers : int
        Worker processes, each with its own copy of the model and its own alias watcher.
    access_log : bool
        Log every request (off by default: it costs throughput).
    graceful : float
        Seconds in-flight requests get to finish after SIGTERM.
    """
    import uvicorn

    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    # metrics of every worker in one place, summed by /metrics; fresh per server, removed after
    metrics_dir = tempfile.mkdtemp(prefix="nnpipe-serve-metrics-")
    os.environ[ENV_DIR] = metrics_dir
    os.environ[ENV_CONFIG] = config.to_env()
    setup_logging()
    try:
        uvicorn.run(APP, factory=True, host=host, port=port, workers=workers, access_log=access_log,
                    timeout_graceful_shutdown=graceful, log_level="info", lifespan="on")
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
