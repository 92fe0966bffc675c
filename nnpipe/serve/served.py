"""One loaded model version as the server uses it: checked input in, predictions out.

A :class:`ServedVersion` is built completely (loaded from a verified copy and
smoke-tested on its input example) before any request can see it, and never
changes afterwards: a swap replaces the whole object, so a request that took
a reference at its start is answered by one version from start to end.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from nnpipe.serve.protocol import Parsed
from nnpipe.tracking.pyfunc import NnpipePyfunc, check_input
from nnpipe.tracking.serving import VerifiedVersion, load_verified


class SmokeFailed(Exception):
    """A freshly loaded version did not predict sensibly on its own input example."""


class ServedVersion:
    """A verified, smoke-tested model version, ready to answer requests.

    Parameters
    ----------
    loaded : VerifiedVersion
        From :func:`nnpipe.tracking.serving.load_verified`.
    """

    def __init__(self, loaded: VerifiedVersion):
        self.name = loaded.name
        self.version = loaded.version
        self.run_id = loaded.run_id
        self.model = loaded.model
        self.example = loaded.example
        names = self.model.feature_names
        self.feature_names: list[str] = list(names) if names else [f"x{i}" for i in range(self.model.spec.n_inputs)]
        self.is_classifier = self.model.classes is not None
        self._pyfunc = NnpipePyfunc(self.model)  # the same predict (and predict_proba param) as the pyfunc model

    @classmethod
    def load(cls, name: str, version: int) -> "ServedVersion":
        """Load ``version`` of ``name`` (digests checked) and smoke-test it; raises on any failure."""
        served = cls(load_verified(name, version))
        served.smoke()
        return served

    def smoke(self) -> None:
        """Predict on the logged input example: the right number of finite outputs, or :class:`SmokeFailed`."""
        if self.example is None or len(self.example) == 0:
            raise SmokeFailed(f"v{self.version} has no input example to test a prediction on")
        try:
            out = np.asarray(self.model.predict(self.features(Parsed(frame=self.example))))
        except Exception as exc:  # any failure at all means: do not serve this version
            raise SmokeFailed(f"v{self.version} failed to predict on its input example: "
                              f"{type(exc).__name__}: {exc}") from exc
        if len(out) != len(self.example):
            raise SmokeFailed(f"v{self.version} returned {len(out)} predictions for {len(self.example)} example rows")
        if out.dtype.kind in "fc" and not np.isfinite(out).all():
            raise SmokeFailed(f"v{self.version} predicts non-finite values on its input example")

    def features(self, parsed: Parsed) -> np.ndarray:
        """Raw features in the trained column order; ValueError (one line, column and row) if unusable."""
        if parsed.frame is not None:
            return check_input(self.model, parsed.frame)
        X = parsed.values
        names = self.model.feature_names
        if parsed.columns is not None and names and parsed.columns != names:
            if not set(names) <= set(parsed.columns) or len(set(parsed.columns)) != len(parsed.columns):
                # missing or repeated columns: the model's own check says which, in its words
                return check_input(self.model, pd.DataFrame(X, columns=parsed.columns))
            where = {c: i for i, c in enumerate(parsed.columns)}
            X = X[:, [where[c] for c in names]]  # the trained column order, whatever order was sent
        return check_input(self.model, X)

    def predict(self, X: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray | pd.DataFrame:
        """Original labels (or values); a DataFrame of class probabilities with ``{"predict_proba": true}``."""
        return self._pyfunc.predict(X, params)
