"""Metric names and their direction: the one place that says whether smaller is better.

The promotion gate (:mod:`nnpipe.flows`), tuning (:mod:`nnpipe.tuning`) and the
CLI all ask here, so a metric can never be "better" in one and "worse" in
another. The direction is read from the metric's last path segment
(``test/mse`` -> ``mse``) by exact match: a suffix test would call a metric
named ``r2_loss`` or ``recall`` whatever its tail happens to spell.
"""

from __future__ import annotations

# Metrics nnpipe logs where a smaller value is better; every other one it logs
# (accuracy, r2) is "greater is better".
LOWER_IS_BETTER = frozenset({"loss", "mse", "mae", "rmse"})
GREATER_IS_BETTER = frozenset({"accuracy", "r2"})


def base_name(metric: str) -> str:
    """``mse`` for ``test/mse``, ``val/mse`` or ``mse``."""
    return metric.rsplit("/", 1)[-1]


def greater_is_better(metric: str) -> bool:
    """False for losses and errors (``loss``, ``mse``, ``mae``, ``rmse``), True otherwise."""
    return base_name(metric) not in LOWER_IS_BETTER


def direction(metric: str) -> str:
    """Optuna's word for :func:`greater_is_better`: ``maximize`` or ``minimize``."""
    return "maximize" if greater_is_better(metric) else "minimize"


def default_metric(task: str) -> str:
    """The metric a model is judged by when none is named: ``accuracy``, or ``mse`` for regression."""
    return "mse" if task == "regression" else "accuracy"
