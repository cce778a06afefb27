"""Names of the execution metrics the workflows compare, and which way each improves."""

import math
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


# The values each metric can take, as (lowest, highest); None where unbounded.
# precision, recall and f1 are workflow_optimize's names for the positive class.
METRIC_RANGES: dict[str, tuple[float | None, float | None]] = {
    **dict.fromkeys((*CLASSIFICATION_METRICS, "precision", "recall", "f1"), (0.0, 1.0)),
    "r2": (None, 1.0),
    "mae": (0.0, None),
    "mse": (0.0, None),
    "rmse": (0.0, None),
    "rows_per_second": (0.0, None),
    "duration_seconds": (0.0, None),
}


def out_of_range(metric: str, value: float, argument: str) -> str | None:
    """Return why ``value`` cannot be a target for ``metric``, or None when it can.

    ``argument`` is the name of the input that contains ``value``, for the message.
    """
    if not math.isfinite(value):
        return f"{argument} must be a finite number, not {value}"

    low, high = METRIC_RANGES.get(metric, (None, None))
    if (low is None or value >= low) and (high is None or value <= high):
        return None
    if low is not None and high is not None:
        bounds = f"between {low:g} and {high:g}"
    elif low is not None:
        bounds = f"at least {low:g}"
    else:
        bounds = f"at most {high:g}"
    return f"{argument} {value:g} is out of range: {metric} is always {bounds}"


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
