"""``Problem``: the arrays of a training run, checked once when built, and never copied needlessly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from nnpipe.core.network import NetworkSpec, init_params
from nnpipe.core.problem import Problem

SPEC = NetworkSpec(4, (5,), ("relu",), 3)
THETA = init_params(SPEC, 0)
X = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
Y = np.arange(12) % 3


def test_arrays_of_the_network_dtype_are_kept_as_they_are():
    p = Problem(SPEC, THETA, X, Y, (X[:3], Y[:3]))
    assert p.X is X and p.Y is Y and p.theta is THETA
    assert np.shares_memory(p.validation[0], X)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.X = X  # type: ignore[misc]


def test_other_inputs_become_contiguous_arrays_of_the_network_dtype():
    p = Problem(SPEC, THETA, X.astype(np.float64)[::2].tolist(), list(Y[::2]), [X[:2], Y[:2]])
    assert p.X.dtype == np.float32 and p.X.flags.c_contiguous and p.X.shape == (6, 4)
    assert isinstance(p.Y, np.ndarray) and isinstance(p.validation, tuple)


def _nan(row=3, col=2, value=np.nan):
    bad = X.copy()
    bad[row, col] = value
    return bad


@pytest.mark.parametrize("make, message", [
    (lambda: Problem(SPEC, THETA, _nan(), Y), "data X column 2 row 3 is NaN"),
    (lambda: Problem(SPEC, THETA, _nan(5, 0, np.inf), Y), "data X column 0 row 5 is inf"),
    (lambda: Problem(SPEC, THETA, X[:, :3], Y), "data X has 3 columns, expected 4"),
    (lambda: Problem(SPEC, THETA, X[:, 0], Y), "data X must be 2-D"),
    (lambda: Problem(SPEC, THETA, X, Y[:7]), "data X has 12 rows but data Y has 7"),
    (lambda: Problem(SPEC, THETA, X, np.where(Y == 1, np.nan, Y)), "data Y row 1 is [nan]; targets must be finite"),
    (lambda: Problem(SPEC, THETA, X[:0], Y[:0]), "cannot train on 0 rows"),
    (lambda: Problem(SPEC, THETA[:-1], X, Y), f"theta has shape ({SPEC.n_params - 1},), expected ({SPEC.n_params},)"),
    (lambda: Problem(SPEC, THETA, X, Y, (_nan(), Y)), "validation X column 2 row 3 is NaN"),
    (lambda: Problem(SPEC, THETA, X, Y, (X, Y[:4])), "validation X has 12 rows but validation Y has 4"),
])
def test_bad_arrays_are_refused_in_one_line_naming_array_column_and_row(make, message):
    with pytest.raises(ValueError) as err:
        make()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_validation_must_be_a_pair():
    with pytest.raises(TypeError, match="validation must be an \\(X, Y\\) pair, got ndarray"):
        Problem(SPEC, THETA, X, Y, X)
