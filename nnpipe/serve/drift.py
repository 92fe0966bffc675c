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

A classifier also carries each class's share of its training rows. The
monitor keeps the same running share of the classes it *predicts* and reports
their total variation distance from the training shares,

    prediction shift = 1/2 * sum over classes |live share - training share|

from 0 (the same mix) to 1 (no class in common): a model that suddenly
predicts one class for everyone shows here even when each feature's mean
barely moved.
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
    classes, class_freq : ndarray of shape (n_classes,), optional
        A classifier's labels and each one's share of the training rows.
    """

    def __init__(self, names: list[str], mean: np.ndarray, scale: np.ndarray, halflife: float = DEFAULT_HALFLIFE,
                 classes: np.ndarray | None = None, class_freq: np.ndarray | None = None):
        self.names = list(names)
        self.mean = np.asarray(mean, dtype=np.float64)
        scale = np.asarray(scale, dtype=np.float64)
        self.scale = np.where(scale > 0, scale, 1.0)  # a constant training column: shift in raw units
        self.halflife = float(halflife)
        self._sum = np.zeros_like(self.mean)
        self._weight = 0.0
        self.rows = 0
        self._lock = threading.Lock()
        known = classes is not None and class_freq is not None
        self.classes = list(np.asarray(classes).tolist()) if known else None
        self.class_freq = np.asarray(class_freq, dtype=np.float64) if known else None
        self._index = {c: i for i, c in enumerate(self.classes)} if known else {}
        self._class_sum = np.zeros(len(self.classes)) if known else None
        self._class_weight = 0.0

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

    def observe_predictions(self, labels: np.ndarray) -> None:
        """Add the labels predicted for one request (a classifier's; ignored without training shares)."""
        if self._class_sum is None or len(labels) == 0:
            return
        counts = np.zeros(len(self.classes))
        for label in np.asarray(labels).reshape(-1).tolist():
            i = self._index.get(label)
            if i is not None:
                counts[i] += 1
        decay = 0.5 ** (len(labels) / self.halflife)
        with self._lock:
            self._class_sum = self._class_sum * decay + counts
            self._class_weight = self._class_weight * decay + len(labels)

    def live_class_share(self) -> np.ndarray | None:
        """The weighted share of each class among recent predictions (None before any, or for regression)."""
        with self._lock:
            return None if not self._class_weight else self._class_sum / self._class_weight

    def prediction_shift(self) -> float | None:
        """Total variation distance between live predicted class shares and training shares (0 to 1)."""
        live = self.live_class_share()
        return None if live is None else float(0.5 * np.abs(live - self.class_freq).sum())

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
        out = {"rows": self.rows, "halflife": self.halflife, "notable_shift": NOTABLE_SHIFT, "features": features}
        if self.classes is not None:
            share = self.live_class_share()
            out["prediction_shift"] = self.prediction_shift()
            out["classes"] = [{"label": c, "train_share": float(self.class_freq[i]),
                               "live_share": None if share is None else float(share[i])}
                              for i, c in enumerate(self.classes)]
        return out
