"""Credentials masked in every URI form; model names checked by MLflow's own rules; npz bombs refused."""

from __future__ import annotations

import os

import numpy as np
import pytest

from nnpipe.names import check_model_name
from nnpipe.redact import move_credentials_to_env, redact, strip_credentials


@pytest.mark.parametrize("text, shown", [
    ("http://alice:S3cretPW@host:5000", "http://alice:***@host:5000"),
    ("https://alice:S3cretPW@host/path?x=1", "https://alice:***@host/path?x=1"),
    ("postgresql://mlflow:S3cretPW@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
    ("https://S3cretPW@host", "https://***@host"),
    ("s3://bucket/key?X-Amz-Signature=S3cretPW&a=1", "s3://bucket/key?X-Amz-Signature=***&a=1"),
    ("error: API request to http://alice:S3cretPW@h/api failed", "error: API request to http://alice:***@h/api failed"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
])
def test_redact_masks_passwords_and_tokens(text, shown):
    assert redact(text) == shown and "S3cretPW" not in redact(text)


def test_credentials_move_from_the_uri_to_mlflows_variables(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    assert strip_credentials("http://al%40ice:pw%3A1@h:5/x") == ("http://h:5/x", "al@ice", "pw:1")
    assert move_credentials_to_env("http://alice:S3cretPW@host:5000") == "http://host:5000"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "alice"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "S3cretPW"
    assert move_credentials_to_env("sqlite:///x.db") == "sqlite:///x.db"


NAMES = ["nnpipe-iris", "a", "x" * 256, "with space", "ünïcode", "a.b_c-d", "",
         " ", "a/b", "a:b", "..", ".", "a//b", "x" * 257, " lead", "trail ", "a\nb", "./a"]


@pytest.mark.parametrize("name", NAMES)
def test_a_name_accepted_here_is_accepted_by_mlflow(name):
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_model_name

    try:
        check_model_name(name)
    except ValueError as exc:
        assert "\n" not in str(exc)
        return
    try:
        _validate_model_name(name)
    except MlflowException as exc:  # pragma: no cover - a rule we missed
        pytest.fail(f"{name!r} passed nnpipe's check but MLflow refuses it: {exc}")


def test_a_decompression_bomb_is_refused_before_it_expands(tmp_path):
    from nnpipe.api import build_spec
    from nnpipe.core.network import init_params
    from nnpipe.model import Model

    spec = build_spec("multiclass", 4, 3, (8,))
    Model(spec, init_params(spec, 0), classes=np.arange(3)).save(tmp_path)
    assert Model.load(tmp_path).theta.shape == (spec.n_params,)
    # ~1 MB on disk, 1.2 GB once decompressed
    np.savez_compressed(tmp_path / "weights.npz", theta=np.zeros(150_000_000), mean=np.zeros(4), scale=np.ones(4))
    assert (tmp_path / "weights.npz").stat().st_size < 2_000_000
    with pytest.raises(ValueError, match=r"member 'theta' has shape \(150000000,\), the spec implies \(67,\)"):
        Model.load(tmp_path)
    np.savez(tmp_path / "weights.npz", theta=np.zeros(spec.n_params), mean=np.zeros(4), scale=np.ones(4),
             extra=np.zeros(3))
    with pytest.raises(ValueError, match=r"unexpected member\(s\) \['extra'\]"):
        Model.load(tmp_path)
    np.savez(tmp_path / "weights.npz", theta=np.array([object()] * spec.n_params), mean=np.zeros(4), scale=np.ones(4))
    with pytest.raises(ValueError, match="has dtype object, expected floating point"):
        Model.load(tmp_path)
