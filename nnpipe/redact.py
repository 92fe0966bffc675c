"""Credentials never leave in a URI: redaction for anything logged, stored or printed.

A tracking URI like ``http://alice:S3cretPW@host`` works (the HTTP client
sends the user info as basic auth), but the URI itself is what ends up in
MLflow parameters, Prefect flow-run parameters, log lines and error messages.
:func:`redact` masks the password (and secret-looking query values) for
display; :func:`move_credentials_to_env` takes the user and password out of a
tracking URI into ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``
(where MLflow reads them) so that only the clean URI is passed around.
"""

from __future__ import annotations

import os
import re
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"
ENV_USER = "MLFLOW_TRACKING_USERNAME"
ENV_PASSWORD = "MLFLOW_TRACKING_PASSWORD"
# query keys whose values are secrets (presigned URLs, tokens, database passwords)
_SECRET_KEYS = re.compile(r"pass|pwd|secret|token|key|signature|credential|auth", re.I)
# scheme://user:password@  or  scheme://token@  anywhere in free text
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/\s:@]*)(?::(?P<pw>[^/\s@]*))?@")


def redact(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` masked (``user:***@``).

    A bare ``scheme://secret@host`` (a token as user) is masked too. Query
    values under secret-looking keys of a URI (``?token=...``) are masked.

    Examples
    --------
    >>> redact("http://alice:S3cretPW@host:5000/api")
    'http://alice:***@host:5000/api'
    """
    if not isinstance(text, str):
        return text

    def userinfo(m: re.Match) -> str:
        if m.group("pw") is None:  # no colon: the whole user part may be a token
            return f"{m.group('scheme')}{MASK}@"
        return f"{m.group('scheme')}{m.group('user')}:{MASK}@"

    out = _USERINFO.sub(userinfo, text)
    return re.sub(r"([?&])([^=&\s#]+)=([^&\s#]*)",
                  lambda m: f"{m.group(1)}{m.group(2)}={MASK if _SECRET_KEYS.search(m.group(2)) else m.group(3)}",
                  out)


def has_credentials(uri: str) -> bool:
    """True if ``uri`` carries a user/password (or a token as user) in its authority."""
    return isinstance(uri, str) and "://" in uri and "@" in urlsplit(uri).netloc


def strip_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """``(uri without user info, user, password)``; the query is kept as is."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri, None, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=host)), unquote(user) or None, unquote(password) or None


def move_credentials_to_env(uri: str | None) -> str | None:
    """For an ``http(s)`` tracking URI with user info: set MLflow's credential env vars, return the clean URI.

    Other URIs (``sqlite:``, ``postgresql://user:pw@host/db`` given as a
    backend store) are returned unchanged: only MLflow's HTTP client reads
    those variables.
    """
    if not uri or not uri.lower().startswith(("http://", "https://")) or not has_credentials(uri):
        return uri
    clean, user, password = strip_credentials(uri)
    if user is not None:
        os.environ[ENV_USER] = user
    if password is not None:
        os.environ[ENV_PASSWORD] = password
    return clean

