"""One rule per fact: metric direction and default names, asked the same way by the gate and by tuning."""

from __future__ import annotations

import pytest

from nnpipe import metrics
from nnpipe.flows.config import PipelineConfig
from nnpipe.names import check_model_name, default_model_name


@pytest.mark.parametrize("name,greater", [("accuracy", True), ("test/accuracy", True), ("val/r2", True),
                                          ("loss", False), ("val/loss", False), ("test/mse", False),
                                          ("mae", False), ("rmse", False), ("logloss", True)])
def test_gate_and_tuning_read_a_metrics_direction_the_same_way(name, greater):
    # "logloss" is not a metric nnpipe logs: the exact-match rule calls it greater-is-better in both
    # places, where a suffix rule in one and an exact rule in the other used to disagree.
    assert metrics.greater_is_better(name) is greater
    assert metrics.direction(name) == ("maximize" if greater else "minimize")
    assert PipelineConfig(promotion_metric=name).metric_for("multiclass") == (name.removeprefix("test/"), greater)


def test_default_metric_follows_the_task():
    assert PipelineConfig().metric_for("regression") == ("mse", False)
    assert PipelineConfig().metric_for("binary") == ("accuracy", True)


@pytest.mark.parametrize("dataset,want", [("iris", "nnpipe-iris"), ("My Data.v2", "nnpipe-my-data-v2"),
                                          ("s3://bucket/lake/", "nnpipe-s3-bucket-lake")])
def test_default_model_name_is_a_valid_registry_name(dataset, want):
    assert default_model_name(dataset) == want
    assert check_model_name(default_model_name(dataset)) == want
