"""Registered-model names: MLflow's rules, checked before anything is trained.

MLflow refuses a bad name only when the model is registered, i.e. after
training, which used to leave a FAILED run and an orphan logged model. The
rules are MLflow's own (``mlflow.utils.validation._validate_model_name`` and
the 256-character name column of its registry tables); a test checks that
every name accepted here is accepted there. Kept in the core (no mlflow
import) so that the CLI can check a name in milliseconds.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any

MAX_MODEL_NAME = 256  # registered_models.name is VARCHAR(256) in MLflow's schema
FORBIDDEN = ("/", ":")


def check_model_name(name: Any, field: str = "model name") -> str:
    """``name`` if MLflow will register a model under it, else ValueError quoting it.

    Rules: a non-empty string without surrounding whitespace, at most 256
    characters, no ``/`` or ``:``, no control characters, and not a path that
    normalises to another name (``.``, ``..``, ``a//b``).
    """
    if not isinstance(name, str):
        raise ValueError(f"{field} must be a string, got {name!r}")
    shown = name if len(name) <= 60 else name[:40] + f"...({len(name)} characters)"
    if not name.strip():
        raise ValueError(f"{field} must not be empty, got {name!r}")
    if name != name.strip():
        raise ValueError(f"{field} must not start or end with whitespace, got {shown!r}")
    if len(name) > MAX_MODEL_NAME:
        raise ValueError(f"{field} is {len(name)} characters long (MLflow allows at most {MAX_MODEL_NAME}), got {shown!r}")
    bad = [c for c in FORBIDDEN if c in name]
    if bad:
        raise ValueError(f"{field} must not contain {bad[0]!r} (MLflow's rule), got {shown!r}")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError(f"{field} must not contain control characters, got {shown!r}")
    norm = posixpath.normpath(name)
    if norm != name or norm == "." or norm.startswith(".."):
        raise ValueError(f"{field} would resolve to the path {norm!r} (MLflow refuses such names), got {shown!r}")
    return name


def default_model_name(dataset_name: str) -> str:
    """``nnpipe-<dataset>``, with anything MLflow or a URL would trip on replaced by ``-``."""
    return "nnpipe-" + re.sub(r"[^A-Za-z0-9_-]+", "-", dataset_name).strip("-").lower()

