"""Session-wide settings shared by every test directory.

No network here: telemetry off everywhere, and each test process gets its own
scratch MLflow store and Prefect home so nothing touches the user's.
"""

from __future__ import annotations

import os
import tempfile

# Set before prefect, mlflow or dask are imported anywhere.
_HOME = tempfile.mkdtemp(prefix="nnpipe-tests-")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("PREFECT_HOME", os.path.join(_HOME, "prefect"))
os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.pop("DASK_SCHEDULER_ADDRESS", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)
