"""Names of the execution metrics the workflows compare, and which way each improves."""

from typing import Any, Literal

# Keys of an execution's metrics, as computed by the execution server.
CLASSIFICATION_METRICS = (
    "accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
)
REGRESSION_METRICS = ("r2", "mae", "mse", "rmse")
LOWER_IS_BETTER = frozenset({"mae", "mse", "rmse"})

MetricName = Literal[
    "accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
    "r2",
    "mae",
    "mse",
    "rmse",
]


def task_of_metric(metric: str) -> str:
    """Return the task type whose executions report ``metric``."""
    return "regression" if metric in REGRESSION_METRICS else "classification"


def meets(value: float, threshold: float, metric: str) -> bool:
    """Return whether ``value`` reaches ``threshold``.

    An error metric (mae, mse, rmse) must be at most the threshold, any other at least it.
    """
    if metric in LOWER_IS_BETTER:
        return value <= threshold
    return value >= threshold


def comparison(metric: str) -> str:
    """Return the operator that ``meets`` applies, for messages."""
    return "<=" if metric in LOWER_IS_BETTER else ">="


def is_better(value: float, other: float, metric: str) -> bool:
    """Return whether ``value`` is strictly better than ``other``."""
    if metric in LOWER_IS_BETTER:
        return value < other
    return value > other


def scalar_metrics(metrics: dict[str, Any] | None) -> dict[str, float]:
    """Return the numeric entries of an execution's metrics, without the confusion matrix."""
    return {
        name: float(value)
        for name, value in (metrics or {}).items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
