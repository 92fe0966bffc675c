"""Fixtures for the production tier: a real S3 store (rclone serve s3) and what the stack needs, or a skip saying why."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest


def missing_production() -> str | None:
    """Why the production stack cannot run here (a package or binary is missing), or None."""
    for module, package in (("s3fs", "s3fs"), ("boto3", "boto3"), ("psycopg2", "psycopg2-binary")):
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed (pip install -e '.[production]')"
    from nnpipe.deploy import objectstore, postgres

    try:
        objectstore.rclone()
        postgres.pg_bin()
    except RuntimeError as exc:
        return str(exc)
    return None


def open_state_dir(prefix: str) -> Path:
    """A state directory whose parents PostgreSQL's unprivileged user can enter (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def s3_store() -> Iterator[str]:
    """``rclone serve s3`` on a free port, its AWS variables set in this process; yields the endpoint."""
    if importlib.util.find_spec("s3fs") is None:
        pytest.skip("s3fs is not installed (pip install -e '.[s3]')")
    from nnpipe.deploy import objectstore
    from nnpipe.deploy.stack import free_port

    try:
        objectstore.rclone()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    state = open_state_dir("nnpipe-s3-")
    endpoint = objectstore.start(state, free_port())
    env = objectstore.client_env(state, endpoint)
    saved = {k: os.environ.get(k) for k in (*env, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE")}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        os.environ.pop(key, None)
    os.environ.update(env)
    try:
        yield endpoint
    finally:
        objectstore.stop_server(state)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(state, ignore_errors=True)
