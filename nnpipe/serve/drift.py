"""Drift in view: live inputs against the statistics the served model was trained with.

The served model carries its scaler: the training split's per-feature mean and
standard deviation. For each feature the monitor keeps a running mean of the
live (raw) inputs, exponentially weighted with a half-life of ``halflife``
rows so that it follows today's traffic, and reports the *standardised mean
shift*

    shift = (live mean - training mean) / training standard deviation

in training standard deviations. It is cheap (two sums per feature), needs no
bins, and reads the same for every feature: |shift| < 0.1 is noise, 0.25 is
worth a look, > 0.5 means the inputs no longer look like the training data.
(PSI would also see a change of spread or shape; it needs per-feature bins the
model does not carry.) A swap starts over against the new version's statistics.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

DEFAULT_HALFLIFE = 1000.0
NOTABLE_SHIFT = 0.25


class DriftMonitor:
    """Running standardised mean shift per feature of the rows one version has answered.

    Parameters
    ----------
    names : list of str
        Feature names, in the model's column order.
    mean, scale : ndarray of shape (n_features,)
        Training statistics (the model's scaler).
    halflife : float
        Rows after which an observation counts half.
    """

    def __init__(self, names: list[str], mean: np.ndarray, scale: np.ndarray, halflife: float = DEFAULT_HALFLIFE):
        self.names = list(names)
        self.mean = np.asarray(mean, dtype=np.float64)
        scale = np.asarray(scale, dtype=np.float64)
        self.scale = np.where(scale > 0, scale, 1.0)  # a constant training column: shift in raw units
        self.halflife = float(halflife)
        self._sum = np.zeros_like(self.mean)
        self._weight = 0.0
        self.rows = 0
        self._lock = threading.Lock()

    def observe(self, X: np.ndarray) -> None:
        """Add rows ``X`` of shape (n_samples, n_features) (raw, checked features)."""
        n = len(X)
        if n == 0:
            return
        decay = 0.5 ** (n / self.halflife)
        with self._lock:  # a request's rows count alike; older requests fade with their age in rows
            self._sum = self._sum * decay + X.sum(axis=0)
            self._weight = self._weight * decay + n
            self.rows += n

    def live_mean(self) -> np.ndarray | None:
        """The weighted mean of recent rows (None before any)."""
        with self._lock:
            return None if self._weight == 0 else self._sum / self._weight

    def shift(self) -> np.ndarray | None:
        """Standardised mean shift per feature (None before any row)."""
        live = self.live_mean()
        return None if live is None else (live - self.mean) / self.scale

    def report(self) -> dict[str, Any]:
        """``{"rows": n, "halflife": h, "features": [{name, train_mean, train_scale, live_mean, shift}]}``."""
        live, shift = self.live_mean(), self.shift()
        features = []
        for i, name in enumerate(self.names):
            features.append({"name": name, "train_mean": float(self.mean[i]), "train_scale": float(self.scale[i]),
                             "live_mean": None if live is None else float(live[i]),
                             "shift": None if shift is None else float(shift[i])})
        return {"rows": self.rows, "halflife": self.halflife, "notable_shift": NOTABLE_SHIFT, "features": features}
