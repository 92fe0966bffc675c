"""Single-process training: determinism, stopping, callbacks, divergence, dtypes."""

import numpy as np
import pytest

from nnpipe import DivergenceError, Network, NetworkSpec, TrainConfig, init_params
from nnpipe.core.evaluation import evaluate_arrays
from nnpipe.core.problem import Problem
from nnpipe.core.training import clip_by_global_norm, fit


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 4, size=(3, 5))
    y = rng.integers(0, 3, 600)
    X = centers[y] + rng.normal(size=(600, 5))
    return X.astype(np.float32), y


def test_same_seed_same_weights_bit_for_bit():
    spec = NetworkSpec(8, (16, 8), ("relu", "tanh"), 3)
    a, b = init_params(spec, 42), init_params(spec, 42)
    assert a.dtype == np.float32 and a.tobytes() == b.tobytes()
    assert not np.array_equal(a, init_params(spec, 43))
    spec64 = NetworkSpec(8, (16, 8), ("relu", "tanh"), 3, dtype="float64")
    np.testing.assert_array_equal(init_params(spec64, 42).astype(np.float32), a)


def test_initialisation_scales_he_and_glorot():
    spec = NetworkSpec(400, (300, 300), ("relu", "tanh"), 10, dtype="float64")
    (W1, b1), (W2, _), (W3, _) = Network(spec).views(init_params(spec, 0))
    assert W1.std() == pytest.approx(np.sqrt(2 / 400), rel=0.02)  # He for relu
    assert W2.std() == pytest.approx(np.sqrt(2 / 600), rel=0.02)  # Glorot for tanh
    assert np.abs(W3).max() <= np.sqrt(6 / 310)  # Glorot uniform output layer
    assert not b1.any()


def test_views_share_memory_with_theta():
    spec = NetworkSpec(3, (4,), ("relu",), 2, head="identity")
    theta = init_params(spec, 0)
    (W, b), _ = Network(spec).views(theta)
    W[0, 0] = 123.0
    assert theta[0] == 123.0 and theta.size == spec.n_params == 3 * 4 + 4 + 4 * 2 + 2


def test_training_learns_and_is_reproducible(blobs):
    X, y = blobs
    spec = NetworkSpec(5, (16,), ("relu",), 3)
    cfg = TrainConfig(epochs=15, batch_size=32, seed=3)
    problem = Problem(spec, init_params(spec, 0), X[:500], y[:500], (X[500:], y[500:]))
    r1, r2 = fit(problem, cfg), fit(problem, cfg)  # the problem's theta is never modified
    assert r1.theta.tobytes() == r2.theta.tobytes()
    assert r1.history["val/accuracy"][-1] > 0.9
    assert r1.history["train/loss"][-1] < r1.history["train/loss"][0] / 3
    assert set(r1.history) >= {"train/loss", "train/accuracy", "val/loss", "val/accuracy", "lr", "train/samples_per_s"}
    assert r1.epochs_run == 15 and len(r1.history["train/loss"]) == 15


def test_callback_sees_every_epoch(blobs):
    X, y = blobs
    spec = NetworkSpec(5, (8,), ("tanh",), 3)
    seen = []
    fit(Problem(spec, init_params(spec, 0), X, y), TrainConfig(epochs=4),
        callbacks=[lambda e, logs: seen.append((e, logs["train/loss"]))])
    assert [e for e, _ in seen] == [0, 1, 2, 3] and all(np.isfinite(v) for _, v in seen)


def test_early_stopping_restores_best(blobs):
    X, y = blobs
    spec = NetworkSpec(5, (32,), ("relu",), 3)
    # A tiny, noisy validation set and a big learning rate make validation loss turn up quickly.
    cfg = TrainConfig(epochs=200, batch_size=8, lr=0.05, patience=3, restore_best=True)
    r = fit(Problem(spec, init_params(spec, 0), X[:100], y[:100], (X[100:130], y[100:130])), cfg)
    assert r.stopped_early and r.epochs_run < 200
    best = r.best_epoch
    assert r.epochs_run == best + 1 + 3
    net = Network(spec)
    assert evaluate_arrays(net, r.theta, X[100:130], y[100:130])["loss"] == pytest.approx(
        min(r.history["val/loss"]), rel=1e-5
    )
    # the one line the console, the run tag and the description show (epochs count from 1)
    note = r.info["early_stopping"]
    assert note.startswith(f"early stopping: stopped after epoch {r.epochs_run} of 200, val/loss had not improved "
                           f"for 3 epochs; the model is epoch {best + 1}'s (val/loss ")
    assert note.endswith(", restored")
    kept = fit(Problem(spec, init_params(spec, 0), X[:100], y[:100], (X[100:130], y[100:130])),
               TrainConfig(epochs=200, batch_size=8, lr=0.05, patience=3, restore_best=False))
    assert "the model is the last epoch's (restore_best is off" in kept.info["early_stopping"]
    assert "early_stopping" not in fit(Problem(spec, init_params(spec, 0), X[:100], y[:100]),
                                       TrainConfig(epochs=2)).info


def test_divergence_stops_with_a_clear_error(blobs):
    X, y = blobs
    spec = NetworkSpec(5, (8,), ("relu",), 1, head="identity")
    Y = (X[:, :1] * 1e6).astype(np.float32)
    with pytest.raises(DivergenceError, match="epoch 0"):
        fit(Problem(spec, init_params(spec, 0), X, Y), TrainConfig(optimizer="sgd", lr=10.0, epochs=3))


def test_gradient_clipping_bounds_the_norm():
    g = np.array([3.0, 4.0])
    clip_by_global_norm(g, 1.0)
    np.testing.assert_allclose(g, [0.6, 0.8])
    g = np.array([0.3, 0.4])
    clip_by_global_norm(g, 1.0)
    np.testing.assert_allclose(g, [0.3, 0.4])


def test_float64_option_and_weight_decay(blobs):
    X, y = blobs
    spec = NetworkSpec(5, (16,), ("relu",), 3, dtype="float64")
    problem = Problem(spec, init_params(spec, 0), X, y)
    plain = fit(problem, TrainConfig(epochs=5, dtype="float64"))
    decayed = fit(problem, TrainConfig(epochs=5, dtype="float64", l2=0.5))
    assert plain.theta.dtype == np.float64
    assert np.linalg.norm(decayed.theta) < np.linalg.norm(plain.theta)


def test_config_errors_quote_the_value():
    with pytest.raises(ValueError, match="'batch_size'.*0"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="'mode'.*'turbo'"):
        TrainConfig(mode="turbo")
    with pytest.raises(ValueError, match="activation"):
        NetworkSpec(3, (4,), ("swish",), 2)


def test_checkpoint_resume_continues_exactly(blobs, tmp_path):
    """A run that crashes after epoch 2's checkpoint resumes from it and ends where an uninterrupted run ends."""
    X, y = blobs
    spec = NetworkSpec(5, (16,), ("relu",), 3)
    problem = Problem(spec, init_params(spec, 0), X, y)
    full = fit(problem, TrainConfig(epochs=6, seed=1))

    class Crash(Exception):
        pass

    def crash_at_2(epoch, logs):  # callbacks run after the epoch's checkpoint is saved
        if epoch == 2:
            raise Crash()

    cfg = TrainConfig(epochs=6, seed=1, checkpoint_every=1, checkpoint_dir=str(tmp_path / "ckpt"))
    with pytest.raises(Crash):
        fit(problem, cfg, callbacks=[crash_at_2])
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir())[-1] == "ckpt-000002.npz"
    resumed = fit(problem, cfg)
    assert resumed.info["resumed_from"].endswith("ckpt-000002.npz")
    assert resumed.theta.tobytes() == full.theta.tobytes()
    assert resumed.history["train/loss"] == pytest.approx(full.history["train/loss"])
    assert resumed.epochs_run == 6
    with np.load(tmp_path / "ckpt" / "ckpt-000005.npz", allow_pickle=False) as z:
        assert {"theta", "opt/m", "opt/v", "opt/t"} <= set(z.files)
