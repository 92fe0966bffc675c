"""Model integrity: a SHA-256 of every file of a registered model, checked before any load.

The artifact store (a directory, a bucket) is easier to write to than the
registry database, and a model is code-adjacent: its ``MLmodel`` names the
module that loads it. So at registration nnpipe records the digest of every
file of the version's model artifact as a tag on the version (in the
registry database, not next to the files), and every load nnpipe makes
(promote, rollback, the gate, :func:`load_model`) first downloads the files,
checks each digest, and then loads *that verified copy*, so nothing can be
swapped between the check and the load. A changed, missing or added file is
refused with a message naming it.

``registered_model_meta`` is left out: MLflow rewrites it when the same
logged model is registered again, and it is read as data, never run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import mlflow
from mlflow import MlflowClient

from nnpipe.tracking.errors import TrackingError

DIGEST_TAG = "nnpipe.sha256"
SKIPPED = frozenset({"registered_model_meta"})
ENV_ALLOW_UNVERIFIED = "NNPIPE_ALLOW_UNVERIFIED_MODELS"
_CHUNK = 1 << 20


class TamperedModel(TrackingError):
    """A model's files do not match the digests recorded at registration (or none were recorded)."""


def digest_tree(root: str | Path) -> dict[str, str]:
    """``{relative posix path: sha256 hex}`` of every file under ``root`` (sorted, skipping :data:`SKIPPED`)."""
    root = Path(root)
    out: dict[str, str] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()):
        rel = path.relative_to(root).as_posix()
        if rel in SKIPPED:
            continue
        if path.is_symlink():  # a link could point the loader anywhere on the serving machine
            raise TamperedModel(f"model file {rel!r} is a symbolic link; refusing to load")
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(_CHUNK), b""):
                h.update(block)
        out[rel] = h.hexdigest()
    return out


def _download(name: str, version: int, dst: str) -> Path:
    return Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{int(version)}", dst_path=dst))


def record(c: MlflowClient, name: str, version: int) -> dict[str, str]:
    """Digest the files of version ``version`` of ``name`` and store them on it as the ``nnpipe.sha256`` tag."""
    with tempfile.TemporaryDirectory(prefix="nnpipe-digest-") as tmp:
        digests = digest_tree(_download(name, version, tmp))
    c.set_model_version_tag(name, str(int(version)), DIGEST_TAG, json.dumps(digests, sort_keys=True))
    return digests


def recorded(c: MlflowClient, name: str, version: int) -> dict[str, str] | None:
    """The digests recorded at registration, or None if the version has none."""
    raw = c.get_model_version(name, str(int(version))).tags.get(DIGEST_TAG)
    return None if raw is None else json.loads(raw)


def compare(expected: dict[str, str], actual: dict[str, str], what: str) -> None:
    """Raise :class:`TamperedModel` naming the first changed, missing or unexpected file."""
    for rel, digest in expected.items():
        if rel not in actual:
            raise TamperedModel(f"{what}: file {rel!r} is missing from the artifact store; refusing to load")
        if actual[rel] != digest:
            raise TamperedModel(
                f"{what}: file {rel!r} does not match the SHA-256 recorded at registration "
                f"(recorded {digest[:12]}..., now {actual[rel][:12]}...): tampered or corrupted; refusing to load"
            )
    extra = sorted(set(actual) - set(expected))
    if extra:
        raise TamperedModel(f"{what}: file {extra[0]!r} was added after registration; refusing to load")


@contextmanager
def verified_copy(name: str, version: int, c: MlflowClient | None = None) -> Iterator[Path]:
    """A local copy of the version's model whose every file matched its recorded digest (removed after)."""
    from nnpipe.tracking.store import client

    c = c or client()
    what = f"model {name!r} v{int(version)}"
    expected = recorded(c, name, version)
    if expected is None and os.environ.get(ENV_ALLOW_UNVERIFIED) != "1":
        raise TamperedModel(
            f"{what} has no recorded SHA-256 digests (not registered by nnpipe >= 0.1 integrity); "
            f"refusing to load it unverified (set {ENV_ALLOW_UNVERIFIED}=1 to allow)"
        )
    with tempfile.TemporaryDirectory(prefix="nnpipe-verified-") as tmp:
        local = _download(name, version, tmp)
        if expected is not None:
            compare(expected, digest_tree(local), what)
        yield local


def verify(name: str, version: int, c: MlflowClient | None = None) -> None:
    """Raise :class:`TamperedModel` unless the version's files match their recorded digests."""
    with verified_copy(name, version, c):
        pass


def load_model(name: str, version: Any) -> Any:
    """nnpipe's serving helper: ``mlflow.pyfunc`` model of ``name`` (version number or ``@alias``), verified first.

    Examples
    --------
    >>> model = load_model("nnpipe-iris", "@champion")   # doctest: +SKIP
    >>> model.predict(frame)                              # doctest: +SKIP
    """
    from nnpipe.tracking.store import client

    c = client()
    if isinstance(version, str) and version.startswith("@"):
        version = int(c.get_model_version_by_alias(name, version[1:]).version)
    # a copy kept for the model's lifetime: MLflow reads the input example from it lazily
    keep = tempfile.mkdtemp(prefix="nnpipe-model-")
    with verified_copy(name, int(version), c) as local:
        dst = Path(keep) / "model"
        shutil.copytree(local, dst)
    compare(recorded(c, name, int(version)) or digest_tree(dst), digest_tree(dst), f"model {name!r} v{int(version)}")
    model = mlflow.pyfunc.load_model(str(dst))
    weakref.finalize(model, shutil.rmtree, keep, True)
    from nnpipe.tracking.pyfunc import InputChecked

    return InputChecked(model)
