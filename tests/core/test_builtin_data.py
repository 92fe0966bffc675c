"""Built-in datasets come from scikit-learn once, then from nnpipe's cache without importing it."""

import json
import os
import subprocess
import sys

import numpy as np

from nnpipe.data.builtin import cache_dir

# Loads iris in a fresh interpreter and reports what it got and whether sklearn was imported.
PROBE = """
import json, sys
from nnpipe.data import load_dataset
ds = load_dataset("iris")
print(json.dumps({"sklearn": "sklearn" in sys.modules, "hash": ds.content_hash,
                  "features": ds.feature_names, "classes": ds.class_names, "shape": list(ds.X.shape)}))
"""


def _probe(cache) -> dict:
    env = {**os.environ, "NNPIPE_CACHE_DIR": str(cache)}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_load_reads_the_cache_not_sklearn(tmp_path):
    first, second = _probe(tmp_path), _probe(tmp_path)
    assert first["sklearn"] and not second["sklearn"]
    assert {k: v for k, v in first.items() if k != "sklearn"} == {k: v for k, v in second.items() if k != "sklearn"}
    assert second["classes"] == ["setosa", "versicolor", "virginica"] and second["shape"] == [150, 4]
    assert len(list((tmp_path / "datasets").glob("iris-sklearn*.npz"))) == 1


def test_corrupt_cache_file_is_read_afresh(tmp_path, monkeypatch):
    monkeypatch.setenv("NNPIPE_CACHE_DIR", str(tmp_path))
    from nnpipe.data import load_dataset

    good = load_dataset("wine")
    (cached,) = (tmp_path / "datasets").glob("wine-sklearn*.npz")
    cached.write_bytes(b"not an npz")
    again = load_dataset("wine")
    assert again.content_hash == good.content_hash and np.array_equal(again.X, good.X)
    assert cached.read_bytes()[:2] == b"PK"  # rewritten whole


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("NNPIPE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "nnpipe"
    monkeypatch.setenv("NNPIPE_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
