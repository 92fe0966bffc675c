"""A model file changed in the artifact store after registration is refused by every nnpipe load, by name."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pandas as pd
import pytest

from nnpipe import tracking
from tests.tracking.helpers import STRONG, WEAK, train_logged


def _model_dir(name: str, version: int) -> Path:
    model_id = tracking.get_version(name, version).source.removeprefix("models:/")
    return Path(urlparse(mlflow.get_logged_model(model_id).artifact_location).path)


def test_tampered_files_are_refused_and_the_champion_stays(sqlite_store, unique_name, iris_splits):
    ds, splits = iris_splits
    v1, _, _ = train_logged(unique_name, ds, splits, experiment=unique_name, **WEAK)
    assert tracking.promote_if_better(unique_name, v1).promoted
    v2, model, _ = train_logged(unique_name, ds, splits, experiment=unique_name, **STRONG)
    digests = tracking.integrity.recorded(tracking.client(), unique_name, v2)
    assert {"MLmodel", "data/nnpipe_model/model.json", "data/nnpipe_model/weights.npz"} <= set(digests)

    served = tracking.load_model(unique_name, v2)  # verified, then loaded from the verified copy
    frame = pd.DataFrame(splits.raw_test[:5], columns=splits.feature_names)
    assert (served.predict(frame) == model.predict(splits.raw_test[:5])).all()

    mlmodel = _model_dir(unique_name, v2) / "MLmodel"
    original = mlmodel.read_text()
    mlmodel.write_text(original.replace("loader_module: nnpipe.tracking.pyfunc", "loader_module: mlflow.sklearn"))
    for action in (lambda: tracking.promote(unique_name, v2), lambda: tracking.promote_if_better(unique_name, v2),
                   lambda: tracking.load_model(unique_name, v2)):
        with pytest.raises(tracking.TrackingError, match=r"file 'MLmodel' does not match the SHA-256 recorded"):
            action()
    assert tracking.alias_version(unique_name, "champion") == v1

    mlmodel.write_text(original)
    (mlmodel.parent / "data" / "nnpipe_model" / "extra.py").write_text("print('hi')\n")
    with pytest.raises(tracking.TamperedModel, match=r"file 'data/nnpipe_model/extra.py' was added"):
        tracking.verify(unique_name, v2)
    (mlmodel.parent / "data" / "nnpipe_model" / "extra.py").unlink()
    (mlmodel.parent / "data" / "nnpipe_model" / "weights.npz").unlink()
    with pytest.raises(tracking.RollbackRefused, match=r"file 'data/nnpipe_model/weights.npz' is missing"):
        tracking.rollback(unique_name, to=v2)
    assert tracking.alias_version(unique_name, "champion") == v1
    assert len(tracking.load_model(unique_name, "@champion").predict(frame)) == 5
