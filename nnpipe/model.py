"""A trained model: network spec, parameters, scaler statistics and label mapping.

It predicts on raw feature columns and returns the original labels. It saves
as ``model.json`` (spec, labels, feature names) plus ``weights.npz`` (arrays
only) and loads with ``allow_pickle=False``: no pickle anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from nnpipe.core.evaluation import evaluate_arrays
from nnpipe.core.network import Network, NetworkSpec
from nnpipe.data.checks import check_features
from nnpipe.data.targets import decode_predictions, encode_targets

FORMAT_VERSION = 1


class Model:
    """A network ready to predict on raw features.

    Parameters
    ----------
    spec : NetworkSpec
    theta : ndarray of shape (n_params,)
    classes : ndarray, optional
        Original labels, in the order of the output units (classification).
    mean, scale : ndarray of shape (n_features,), optional
        Standardisation fitted on the training split; features are mapped to
        ``(X - mean) / scale`` before the network sees them.
    target_mean, target_scale : ndarray of shape (n_targets,), optional
        Regression only: the network predicts ``(y - target_mean) / target_scale``
        and :meth:`predict` maps it back to the original units.
    feature_names : list of str, optional
    metadata : dict, optional
        Free-form JSON-serialisable facts (dataset, run id, ...).
    class_freq : ndarray of shape (n_classes,), optional
        Classification: each class's share of the training rows, in ``classes``
        order (a served model compares its live predictions with it).
    """

    def __init__(
        self,
        spec: NetworkSpec,
        theta: np.ndarray,
        classes: np.ndarray | None = None,
        mean: np.ndarray | None = None,
        scale: np.ndarray | None = None,
        feature_names: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        target_mean: np.ndarray | None = None,
        target_scale: np.ndarray | None = None,
        class_freq: np.ndarray | None = None,
    ):
        self.spec = spec
        self.net = Network(spec)
        self.theta = np.asarray(theta, dtype=spec.dtype)
        if self.theta.shape != (spec.n_params,):
            raise ValueError(f"theta has shape {self.theta.shape}, expected ({spec.n_params},)")
        self.classes = None if classes is None else np.asarray(classes)
        n_in = spec.n_inputs
        self.mean = np.zeros(n_in) if mean is None else np.asarray(mean, dtype=np.float64)
        self.scale = np.ones(n_in) if scale is None else np.asarray(scale, dtype=np.float64)
        n_out = spec.n_outputs
        self.target_mean = np.zeros(n_out) if target_mean is None else np.asarray(target_mean, dtype=np.float64).reshape(-1)
        self.target_scale = np.ones(n_out) if target_scale is None else np.asarray(target_scale, dtype=np.float64).reshape(-1)
        self.feature_names = list(feature_names) if feature_names is not None else None
        self.metadata = dict(metadata or {})
        self.class_freq = None if class_freq is None else np.asarray(class_freq, dtype=np.float64)
        if self.class_freq is not None and (self.classes is None or self.class_freq.shape != self.classes.shape):
            raise ValueError(f"class_freq has shape {self.class_freq.shape}, expected one share per class "
                             f"({None if self.classes is None else len(self.classes)})")

    @property
    def task(self) -> str:
        return self.spec.task

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Scaled features in the network's dtype; checks the number of columns."""
        # finite, 2-D, the trained number of columns; errors name the column and row
        X = check_features(X, "X", self.spec.n_inputs, columns=self.feature_names, allow_1d=True)
        Z = (X - self.mean) / self.scale
        # beyond the network's dtype (1e39 in a float32 model) a value becomes inf, and every output NaN
        limit = float(np.finfo(self.spec.dtype).max) ** 0.5
        far = np.abs(Z) > limit
        if far.any():
            row, col = (int(i) for i in np.argwhere(far)[0])
            label = repr(self.feature_names[col]) if self.feature_names else str(col)
            raise ValueError(f"X column {label} row {row} is {float(X[row, col])!r}, too large for this "
                             f"{self.spec.dtype} model (scaled, more than {limit:.3g} in magnitude)")
        return Z.astype(self.spec.dtype)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Head outputs: class probabilities (n_samples, n_classes) or, for binary, (n_samples, 2)."""
        P = self.net.forward(self.theta, self.transform(X))
        if self.spec.head == "sigmoid":
            return np.hstack([1 - P, P])
        return P

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Original labels (classification) or values (regression) for raw features ``X``."""
        P = self.net.forward(self.theta, self.transform(X))
        if self.task == "regression":
            P = P * self.target_scale + self.target_mean
        return decode_predictions(P, self.spec.head, self.classes)

    def encode_targets(self, y: np.ndarray) -> np.ndarray:
        """Targets as the network is trained on them (class indices, or standardised values)."""
        Y = encode_targets(y, self.spec.head, self.classes, "float64" if self.task == "regression" else self.spec.dtype)
        if self.task == "regression":
            Y = ((Y - self.target_mean) / self.target_scale).astype(self.spec.dtype)
        return Y

    def evaluate(self, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Loss and accuracy, or for regression MSE/MAE/R² in the target's own units."""
        if self.task == "regression":
            Y = encode_targets(y, "identity", None, "float64")
            diff = self.predict(X).reshape(Y.shape) - Y
            mse = float(np.mean(diff**2))
            var = float(np.mean((Y - Y.mean(axis=0)) ** 2))
            return {"loss": mse, "mse": mse, "mae": float(np.mean(np.abs(diff))), "r2": 1 - mse / var if var else 0.0}
        return evaluate_arrays(self.net, self.theta, self.transform(X), self.encode_targets(y))

    def save(self, path: str | Path) -> Path:
        """Write ``model.json`` and ``weights.npz`` into directory ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        np.savez(
            path / "weights.npz", theta=self.theta, mean=self.mean, scale=self.scale,
            target_mean=self.target_mean, target_scale=self.target_scale,
        )
        doc = {
            "format_version": FORMAT_VERSION,
            "spec": self.spec.to_dict(),
            "classes": None if self.classes is None else self.classes.tolist(),
            "feature_names": self.feature_names,
            "metadata": self.metadata,
            "class_freq": None if self.class_freq is None else self.class_freq.tolist(),
        }
        (path / "model.json").write_text(json.dumps(doc, indent=2, default=str))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Model":
        """Read a model written by :meth:`save`."""
        path = Path(path)
        spec_file = path / "model.json"
        if not spec_file.is_file():
            raise FileNotFoundError(f"no model.json in {str(path)!r}: not a saved nnpipe model")
        doc = json.loads(spec_file.read_text())
        spec = NetworkSpec.from_dict(doc["spec"])
        weights = path / "weights.npz"
        _check_weights(weights, spec)  # declared sizes and shapes, before a byte is decompressed
        with np.load(weights, allow_pickle=False) as arrays:
            theta, mean, scale = arrays["theta"], arrays["mean"], arrays["scale"]
            target = {k: arrays[k] for k in ("target_mean", "target_scale") if k in arrays.files}
        classes = doc.get("classes")
        return cls(
            spec,
            theta,
            classes=None if classes is None else np.asarray(classes),
            mean=mean,
            scale=scale,
            feature_names=doc.get("feature_names"),
            metadata=doc.get("metadata"),
            class_freq=doc.get("class_freq"),
            **target,
        )


def _check_weights(path: Path, spec: NetworkSpec) -> None:
    """Refuse a ``weights.npz`` whose members are not the arrays the spec implies, before reading them.

    A zip member can claim any size; a small file can expand to gigabytes (a
    decompression bomb). Each member's ``.npy`` header (a few hundred bytes)
    gives its dtype and shape: they must be a float array of the shape the
    spec implies, and the member's declared uncompressed size must be that
    array's bytes plus its header. ``np.load`` then reads exactly that much.
    """
    import zipfile

    n_in, n_out = spec.n_inputs, spec.n_outputs
    expected = {"theta": {(spec.n_params,)}, "mean": {(n_in,)}, "scale": {(n_in,)},
                "target_mean": {(n_out,), (1, n_out)}, "target_scale": {(n_out,), (1, n_out)}}
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"{path}: not a weights archive ({exc})") from None
    with zf:
        members = zf.infolist()
        names = [m.filename.removesuffix(".npy") for m in members]
        unexpected = sorted(set(names) - set(expected))
        if unexpected or len(names) != len(set(names)):
            raise ValueError(f"{path}: unexpected member(s) {unexpected or names}; expected {sorted(expected)}")
        for key in ("theta", "mean", "scale"):
            if key not in names:
                raise ValueError(f"{path}: member {key!r} is missing")
        for info, key in zip(members, names):
            with zf.open(info) as fh:
                try:
                    version = np.lib.format.read_magic(fh)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(fh)
                except ValueError as exc:
                    raise ValueError(f"{path}: member {key!r} is not a NumPy array: {exc}") from None
                header = fh.tell() if hasattr(fh, "tell") else 0
            if dtype.kind != "f":
                raise ValueError(f"{path}: member {key!r} has dtype {dtype}, expected floating point")
            if tuple(shape) not in expected[key]:
                raise ValueError(f"{path}: member {key!r} has shape {tuple(shape)}, the spec implies "
                                 f"{sorted(expected[key])[0]}")
            size = header + int(np.prod(shape)) * dtype.itemsize
            if info.file_size != size:
                raise ValueError(f"{path}: member {key!r} declares {info.file_size} bytes, its header implies {size}")
