"""scikit-learn's bundled toy datasets, kept as ``.npz`` in nnpipe's cache directory.

Importing scikit-learn costs 1-2 s (it pulls in SciPy), which is most of what a
warm ``nnpipe train`` on iris spends before training. The first load of a
built-in dataset goes through ``sklearn.datasets`` as before and writes the
arrays to ``<cache>/datasets/<name>-sklearn<version>.npz``; later loads read
that file and never import scikit-learn. The version in the file name means an
upgraded scikit-learn is read afresh. The cache directory is
``$NNPIPE_CACHE_DIR``, else ``$XDG_CACHE_HOME/nnpipe``, else ``~/.cache/nnpipe``;
a directory that cannot be written only costs the speed-up.
"""

from __future__ import annotations

import importlib.metadata
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# name -> scikit-learn loader function
LOADERS: dict[str, str] = {
    "iris": "load_iris",
    "wine": "load_wine",
    "breast_cancer": "load_breast_cancer",
    "digits": "load_digits",
    "diabetes": "load_diabetes",  # regression
}


@dataclass(frozen=True)
class Bundle:
    """The arrays of one built-in dataset.

    Attributes
    ----------
    X : ndarray of shape (n_samples, n_features), float64
    y : ndarray of shape (n_samples,)
    feature_names : list of str
    class_names : list of str or None
        Readable class names in label order (iris: setosa, ...); None for regression.
    """

    X: np.ndarray
    y: np.ndarray
    feature_names: list[str]
    class_names: list[str] | None


def cache_dir() -> Path:
    """nnpipe's cache directory (not created here)."""
    if os.environ.get("NNPIPE_CACHE_DIR"):
        return Path(os.environ["NNPIPE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nnpipe"


def load_bundle(name: str) -> Bundle:
    """The built-in dataset ``name`` (a key of ``LOADERS``), from the cache when it is there."""
    path = cache_dir() / "datasets" / f"{name}-sklearn{importlib.metadata.version('scikit-learn')}.npz"
    try:
        with np.load(path, allow_pickle=False) as f:
            classes = f["class_names"].tolist()
            return Bundle(f["X"], f["y"], f["feature_names"].tolist(), classes or None)
    except (OSError, KeyError, ValueError):
        pass  # absent, unreadable or from an older layout: read it from scikit-learn
    bundle = _from_sklearn(name)
    _write(path, bundle)
    return bundle


def _from_sklearn(name: str) -> Bundle:
    import sklearn.datasets

    raw = getattr(sklearn.datasets, LOADERS[name])()
    X = np.asarray(raw.data, dtype=np.float64)
    names = [str(f) for f in getattr(raw, "feature_names", [f"x{i}" for i in range(X.shape[1])])]
    classes = getattr(raw, "target_names", None)
    classes = [str(c) for c in classes] if classes is not None and np.ndim(classes) == 1 else None
    return Bundle(X, np.asarray(raw.target), names, classes)


def _write(path: Path, bundle: Bundle) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # written beside and renamed: a concurrent reader sees the whole file or none
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, X=bundle.X, y=bundle.y, feature_names=np.array(bundle.feature_names, dtype=str),
                     class_names=np.array(bundle.class_names or [], dtype=str))
        os.replace(tmp, path)
    except OSError:
        pass  # read-only home or full disk: the next load reads scikit-learn again
