"""Accuracy parity with scikit-learn's MLPClassifier on its built-in classification datasets.

Same layers, optimizer (Adam, lr 1e-3), L2 (alpha 1e-4), batch size and epochs;
MLPClassifier's early exit is switched off so both see the same number of
epochs. The median test accuracy over seeds must be within 2 points.
"""

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from nnpipe import TrainConfig
from nnpipe.api import train
from nnpipe.data import load_dataset, split_and_scale

SEEDS = (0, 1, 2)


@pytest.mark.parametrize("name,epochs", [("iris", 200), ("wine", 100), ("breast_cancer", 60), ("digits", 40)])
def test_accuracy_within_two_points_of_mlpclassifier(name, epochs):
    ds = load_dataset(name)
    ours, theirs = [], []
    for seed in SEEDS:
        s = split_and_scale(ds, test_size=0.25, val_size=0.0, seed=seed)
        batch = min(200, len(s.y_train))
        # scikit-learn divides its L2 term by the batch size; ours is per step.
        cfg = TrainConfig(optimizer="adam", lr=1e-3, l2=1e-4 / batch, batch_size=batch, epochs=epochs, seed=seed, dtype="float64")
        model = train(s, cfg, hidden=(100,), activation="relu").model
        ours.append(model.evaluate(s.raw_test, s.y_test)["accuracy"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            ref = MLPClassifier((100,), alpha=1e-4, batch_size=batch, learning_rate_init=1e-3, max_iter=epochs,
                                tol=0.0, n_iter_no_change=epochs + 1, random_state=seed).fit(s.X_train, s.y_train)
        theirs.append(ref.score(s.X_test, s.y_test))
    print(name, "nnpipe", ours, "MLPClassifier", theirs)
    assert np.median(ours) >= np.median(theirs) - 0.02, (ours, theirs)
