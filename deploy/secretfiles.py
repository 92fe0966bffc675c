"""Secrets of a stack: files in ``<state>/secrets`` with mode 0600, never arguments, URLs or parameters."""

from __future__ import annotations

import os
from pathlib import Path


def secret_dir(state: Path) -> Path:
    path = state / "secrets"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def write_secret(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the first byte (never world-readable, even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)
