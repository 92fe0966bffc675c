"""``until``: the target expression, and every loop's record of the first epoch that reaches it."""

from __future__ import annotations

import time

import numpy as np
import pytest

import nnpipe
from nnpipe.config import TrainConfig
from nnpipe.target import Target, command_started, describe, parse_target


@pytest.fixture(scope="module")
def iris():
    return nnpipe.split_and_scale(nnpipe.load_dataset("iris"), seed=0)


@pytest.mark.parametrize("text,want", [
    ("val/accuracy>=0.85", Target("val/accuracy", ">=", 0.85)),
    (" val/loss <= 0.3 ", Target("val/loss", "<=", 0.3)),
    ("train/accuracy>=1", Target("train/accuracy", ">=", 1.0)),
    ("val/r2>=0.5", Target("val/r2", ">=", 0.5)),
    ("val/mse<=1e-2", Target("val/mse", "<=", 0.01)),
])
def test_parse_good(text, want):
    assert parse_target(text) == want


@pytest.mark.parametrize("text,says", [
    ("val/accuracy>0.85", "expected METRIC>=VALUE"),
    ("accuracy>=0.85", "expected METRIC>=VALUE"),
    ("test/accuracy>=0.85", "expected METRIC>=VALUE"),
    ("val/accuracy>=high", "'high' is not a number"),
    ("val/accuracy>=inf", "finite"),
    ("val/loss>=0.3", "lower-is-better, write val/loss<=0.3"),
    ("val/accuracy<=0.9", "higher-is-better, write val/accuracy>=0.9"),
    ("", "expected METRIC>=VALUE"),
    ("val/accuracy>=85", "accuracy never reaches 85 (between 0 and 1)"),
    ("val/loss<=-1", "loss never reaches -1 (at least 0)"),
    ("val/r2>=1.5", "r2 never reaches 1.5 (at most 1)"),
])
def test_parse_bad_names_flag_and_value(text, says):
    with pytest.raises(ValueError) as err:
        parse_target(text)
    assert str(err.value).startswith(f"--until {text!r}") and says in str(err.value)
    assert "\n" not in str(err.value)


def test_config_refuses_a_bad_target_and_logs_a_good_one():
    with pytest.raises(ValueError, match=r"config field 'until' \(--until\) 'val/acc>0.9'"):
        TrainConfig(until="val/acc>0.9")
    with pytest.raises(ValueError, match="stop_at_target"):
        TrainConfig(until="val/loss<=1", stop_at_target="yes")
    params = TrainConfig(until="val/loss<=1").applicable()
    assert params["until"] == "val/loss<=1" and params["stop_at_target"] is True
    assert "until" not in TrainConfig().applicable() and "stop_at_target" not in TrainConfig().applicable()


def test_reached_and_task_check():
    t = parse_target("val/loss<=0.5")
    assert t.reached({"val/loss": 0.5}) and not t.reached({"val/loss": 0.51})
    assert not t.reached({"train/loss": 0.1}) and not t.reached({"val/loss": float("nan")})
    with pytest.raises(ValueError, match="a classification run logs val/loss, val/accuracy, not val/mse"):
        parse_target("val/mse<=1").check_task("multiclass")
    with pytest.raises(ValueError, match="not train/r2"):
        parse_target("train/r2>=0.5").check_task("regression")
    with pytest.raises(ValueError, match="no validation rows"):
        parse_target("val/accuracy>=0.5").check_task("binary", has_validation=False)
    parse_target("val/r2>=0.5").check_task("regression")


def test_stop_at_target_stops_there_and_the_model_is_that_epoch(iris):
    cfg = dict(seed=0, lr=0.01)  # a constant schedule: the lr does not depend on the epoch budget
    out = nnpipe.train(iris, TrainConfig(epochs=60, until="val/accuracy>=0.8", patience=50, **cfg), hidden=(8,))
    rec = out.info["target"]
    assert rec["reached"] and out.epochs_run == rec["epochs"] < 60 and out.stopped_early
    assert out.history["val/accuracy"][-1] >= 0.8 > max(out.history["val/accuracy"][:-1], default=0)
    assert rec["value"] == out.history["val/accuracy"][-1] and rec["seconds"] >= 0
    # The model is the epoch that reached the target, not early stopping's best-loss epoch.
    same = nnpipe.train(iris, TrainConfig(epochs=rec["epochs"], **cfg), hidden=(8,))
    np.testing.assert_array_equal(out.theta, same.theta)
    assert "stopped at the target after epoch" in out.info["early_stopping"]


def test_record_only_trains_on_and_never_reached_says_so(iris):
    out = nnpipe.train(iris, TrainConfig(epochs=12, seed=0, lr=0.01, until="val/loss<=0.6", stop_at_target=False),
                       hidden=(8,))
    rec = out.info["target"]
    assert out.epochs_run == 12 and rec["reached"]
    first = next(i for i, v in enumerate(out.history["val/loss"]) if v <= 0.6)
    assert rec["epochs"] == first + 1 and rec["best"] == min(out.history["val/loss"])
    never = nnpipe.train(iris, TrainConfig(epochs=3, seed=0, until="val/loss<=0.0001"), hidden=(8,)).info["target"]
    assert never == {"target": "val/loss<=0.0001", "key": "val/loss", "reached": False,
                     "best": never["best"]} and never["best"] > 0.0001
    assert describe(never).startswith("target val/loss<=0.0001: not reached (best val/loss ")


def test_seconds_count_from_the_command_start(iris):
    with command_started(time.time() - 100):  # a command that started 100 s ago
        rec = nnpipe.train(iris, TrainConfig(epochs=2, seed=0, until="train/loss<=100"), hidden=(8,)).info["target"]
    assert rec["reached"] and rec["epochs"] == 1 and rec["seconds"] >= 100


def test_a_metric_the_task_never_logs_fails_before_training(iris):
    seen = []
    with pytest.raises(ValueError, match="--until 'val/r2>=0.5': a classification run logs"):
        nnpipe.train(iris, TrainConfig(epochs=2, until="val/r2>=0.5"), hidden=(8,),
                     callbacks=[lambda e, logs: seen.append(e)])
    assert seen == []
