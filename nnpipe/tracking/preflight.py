"""Is the tracking store usable? Answered in seconds, before a run starts.

MLflow's own client retries a refused connection with exponential backoff
(7 retries, up to minutes: a server that was down at the start used to be
reported after 277 s). That patience is right during a run, when a server
restarting must not lose metrics, and wrong before one. So the probe here is
a plain HTTP request with a short timeout and no retries, made with the
credentials MLflow would use; MLflow's own retry settings are left alone.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

from nnpipe.redact import redact, strip_credentials
from nnpipe.tracking.errors import TrackingError

DEFAULT_TIMEOUT = 5.0


class StoreUnavailable(TrackingError):
    """The tracking store cannot be reached, refuses our credentials, or cannot be written."""


def check_store(uri: str, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Raise :class:`StoreUnavailable` (one line, no password) unless ``uri`` looks usable.

    * ``sqlite:///path``: the file, if it exists, is a SQLite database; else
      its directory exists and is writable (a missing directory is more
      often a typo than a wish for a new, empty registry).
    * ``http(s)://``: the server answers ``/health`` and accepts the
      credentials from ``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD`` (or
      ``MLFLOW_TRACKING_TOKEN``) on a read-only API call, within ``timeout``.
    * Anything else (``file:``, ``databricks``, database URLs) is left to MLflow.
    """
    if uri.startswith("sqlite:"):
        _check_sqlite(uri)
    elif uri.lower().startswith(("http://", "https://")):
        _check_http(uri, timeout)


def _check_sqlite(uri: str) -> None:
    from nnpipe.tracking.store import sqlite_path

    db = sqlite_path(uri)
    if db is None:
        raise StoreUnavailable(f"tracking URI {uri!r}: expected sqlite:///path/to/file.db")
    if db.exists():
        if not db.is_file():
            raise StoreUnavailable(f"tracking store {db}: not a file")
        with open(db, "rb") as fh:
            head = fh.read(16)
        if head and head != b"SQLite format 3\x00":
            raise StoreUnavailable(f"tracking store {db}: not a SQLite database")
        if not os.access(db, os.W_OK):
            raise StoreUnavailable(f"tracking store {db}: not writable")
        return
    if not db.parent.is_dir():  # a typo in the path would otherwise start a new, empty registry
        raise StoreUnavailable(f"tracking store {db}: directory {db.parent} does not exist (a typo?); "
                               "create it first to start a new store there")
    parent = next((p for p in [db.parent, *db.parent.parents] if p.exists()), Path("/"))
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise StoreUnavailable(f"tracking store {db}: cannot create it, {parent} is not a writable directory")


def _auth_header() -> dict[str, str]:
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user or password:
        pair = base64.b64encode(f"{user or ''}:{password or ''}".encode()).decode()
        return {"Authorization": f"Basic {pair}"}
    return {}


def _check_http(uri: str, timeout: float) -> None:
    clean, user, password = strip_credentials(uri)
    shown = redact(uri)
    base = clean.rstrip("/")
    headers = _auth_header()
    if user is not None:  # credentials still in the URI (not configured yet): use them as MLflow would
        headers = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password or ''}".encode()).decode()}
    search = f"{base}/api/2.0/mlflow/experiments/search"
    probes = (  # /health needs no credentials; a read-only API call checks them
        urllib.request.Request(f"{base}/health"),
        urllib.request.Request(search, method="POST", data=json.dumps({"max_results": 1}).encode(),
                               headers={**headers, "Content-Type": "application/json"}),
    )
    for i, request in enumerate(probes):
        url = request.full_url
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read(1024)
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                who = "no credentials" if not headers else "the credentials from MLFLOW_TRACKING_USERNAME/PASSWORD"
                raise StoreUnavailable(
                    f"tracking server {shown} refused {who} (HTTP {exc.code}); "
                    "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
                ) from None
            if i == 0 and exc.code == 404:
                continue  # a proxy in front may not pass /health; the API call decides
            raise StoreUnavailable(f"tracking server {shown} answered HTTP {exc.code} to {url.replace(base, '')}") from None
        except (TimeoutError, socket.timeout):
            raise StoreUnavailable(f"tracking server {shown} did not answer within {timeout:g} s") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise StoreUnavailable(f"tracking server {shown} did not answer within {timeout:g} s") from None
            text = getattr(reason, "strerror", None) or str(reason)
            raise StoreUnavailable(f"tracking server {shown} is not reachable: {text}") from None
        except (ConnectionError, OSError) as exc:
            raise StoreUnavailable(f"tracking server {shown} is not reachable: {exc.strerror or exc}") from None
