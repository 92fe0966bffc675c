"""Object-store locations (``s3://``): short timeouts, a probe before anything starts, one-line errors.

The endpoint and credentials come from the standard AWS sources, never from
the URL: ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, ``AWS_SHARED_CREDENTIALS_FILE``. The packages are the ``s3``
extra (``pip install 'nnpipe[s3]'``: s3fs).

botocore's defaults retry a dead endpoint for 40 s; a training that cannot
reach its data should say so in seconds, so connections time out after
``CONNECT_TIMEOUT_S`` with ``MAX_ATTEMPTS`` tries. A user's own
``storage_options`` win.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from nnpipe.data.load import DataError

CONNECT_TIMEOUT_S = 3
READ_TIMEOUT_S = 60
MAX_ATTEMPTS = 2
S3_PROTOCOLS = ("s3://", "s3a://")
EXTRA_HINT = "install the s3 extra: pip install 'nnpipe[s3]'"


def is_s3(location: str) -> bool:
    return str(location).lower().startswith(S3_PROTOCOLS)


def with_defaults(location: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """``storage_options`` plus the short timeouts for an ``s3://`` location (the caller's values win)."""
    opts = copy.deepcopy(dict(storage_options or {}))
    if not is_s3(location):
        return opts
    config = opts.setdefault("config_kwargs", {})
    config.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
    config.setdefault("read_timeout", READ_TIMEOUT_S)
    config.setdefault("retries", {"max_attempts": MAX_ATTEMPTS, "mode": "standard"})
    return opts


def _endpoint() -> str:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "the default AWS endpoint"


def explain(location: str, exc: BaseException) -> DataError:
    """One line that says what is wrong with reaching ``location`` and what to set."""
    name = type(exc).__name__
    text = str(exc).splitlines()[0] if str(exc) else name
    if isinstance(exc, ImportError):
        return DataError(f"{location}: {EXTRA_HINT} ({text})")
    if name == "NoCredentialsError":
        return DataError(f"{location}: no S3 credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                         "AWS_PROFILE or AWS_SHARED_CREDENTIALS_FILE (a URL never carries them)")
    if isinstance(exc, PermissionError):
        return DataError(f"{location}: access denied by {_endpoint()} ({text}); check the S3 credentials")
    if isinstance(exc, FileNotFoundError):
        bucket = location.split("://", 1)[1].split("/", 1)[0]
        return DataError(f"{location}: bucket {bucket!r} not found at {_endpoint()} ({text})")
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError") \
            or isinstance(exc, (ConnectionError, TimeoutError)):
        return DataError(f"{location}: cannot reach the S3 endpoint {_endpoint()} ({name}); is it running, "
                         "and is AWS_ENDPOINT_URL right?")
    return DataError(f"{location}: cannot open this location: {name}: {text}")


def probe(location: str, storage_options: dict[str, Any] | None = None) -> None:
    """List the bucket of an ``s3://`` location once, raising :func:`explain`'s one line on any failure.

    A listing of the object itself would hide a missing bucket or bad keys
    (s3fs answers "does not exist" to both), so the bucket is listed first.
    """
    if not is_s3(location):
        return
    if "@" in location.split("://", 1)[1].split("/", 1)[0]:  # s3://KEY:SECRET@bucket/...
        raise DataError(f"{location.split('://', 1)[0]}://***@{location.split('@', 1)[1]}: credentials in the URL "
                        "would be stored with the run (MLflow params, Prefect parameters); set AWS_ACCESS_KEY_ID and "
                        "AWS_SECRET_ACCESS_KEY, AWS_PROFILE or AWS_SHARED_CREDENTIALS_FILE instead")
    try:
        import fsspec

        fs, _, _ = fsspec.get_fs_token_paths(location, storage_options=with_defaults(location, storage_options))
        bucket = location.split("://", 1)[1].split("/", 1)[0]
        fs.ls(bucket, refresh=True)
    except DataError:
        raise
    except Exception as exc:  # botocore/aiobotocore errors have no common base worth importing
        raise explain(location, exc) from exc
