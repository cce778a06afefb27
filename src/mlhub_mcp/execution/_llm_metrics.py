"""Metrics of an LLM execution: totals, exact-match accuracy and class scores."""

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mlhub_mcp.execution._groq import RowResult

# Labels with more distinct values than this are free text, not classes.
_MAX_CLASSES = 50
_MIN_SHARE_IN_CLASSES = 0.5
_OTHER_CLASS = "(other)"


def normalize_text(value: Any) -> str:
    """Lowercase a value's text and collapse its whitespace, for exact-match scoring."""
    return " ".join(str(value).split()).lower()


def llm_metrics(
    results: "list[RowResult]", labels: list[Any] | None, duration_seconds: float
) -> dict[str, Any]:
    """Return token and row totals, and with labels the exact-match scores.

    Accuracy is the share of rows whose normalised output equals the normalised
    label (see ``normalize_text``). It counts only rows that have both an output
    and a label (``evaluated_rows``), so failed rows are left out. When the
    labels look like classes, macro and weighted precision, recall and F1 and a
    confusion matrix are added, and an output outside the classes counts as the
    class ``(other)``.
    """
    latencies = [r.latency_ms for r in results if r.output is not None and r.latency_ms is not None]
    metrics: dict[str, Any] = {
        "rows": len(results),
        "failed_rows": sum(1 for r in results if r.error is not None),
        "prompt_tokens": sum(r.prompt_tokens or 0 for r in results),
        "completion_tokens": sum(r.completion_tokens or 0 for r in results),
        "total_tokens": sum(r.total_tokens or 0 for r in results),
        "retries": sum(max(0, r.attempts - 1) for r in results),
        "duration_seconds": round(duration_seconds, 3),
        "latency_ms_p50": float(np.percentile(latencies, 50)) if latencies else None,
        "latency_ms_p95": float(np.percentile(latencies, 95)) if latencies else None,
    }
    if labels is None:
        return metrics

    pairs = [
        (normalize_text(r.output), normalize_text(label))
        for r, label in zip(results, labels, strict=True)
        if r.output is not None and label is not None
    ]
    metrics["evaluated_rows"] = len(pairs)
    if not pairs:
        metrics["accuracy"] = None
        return metrics

    predicted = [p for p, _ in pairs]
    expected = [t for _, t in pairs]
    metrics["accuracy"] = sum(p == t for p, t in pairs) / len(pairs)
    metrics.update(_class_metrics(expected, predicted))
    return metrics


def _class_metrics(expected: list[str], predicted: list[str]) -> dict[str, Any]:
    from sklearn import metrics as skm

    classes = sorted(set(expected))
    in_classes = sum(p in classes for p in predicted)
    # Labels are classes when there are few of them, some repeat (all-unique
    # labels are free text), and most outputs are one of them.
    few = len(classes) <= _MAX_CLASSES and len(classes) < len(expected)
    if not few or in_classes / len(predicted) < _MIN_SHARE_IN_CLASSES:
        return {}

    mapped = [p if p in classes else _OTHER_CLASS for p in predicted]
    result: dict[str, Any] = {"outputs_outside_classes": len(predicted) - in_classes}
    for average in ("macro", "weighted"):
        # labels=classes keeps "(other)" out of the averages while it still
        # counts as a miss for the true class.
        precision, recall, f1, _ = skm.precision_recall_fscore_support(
            expected, mapped, labels=classes, average=average, zero_division=0
        )
        result[f"precision_{average}"] = float(precision)
        result[f"recall_{average}"] = float(recall)
        result[f"f1_{average}"] = float(f1)

    matrix_labels = classes + ([_OTHER_CLASS] if _OTHER_CLASS in mapped else [])
    matrix = skm.confusion_matrix(expected, mapped, labels=matrix_labels)
    result["confusion_matrix"] = {"labels": matrix_labels, "matrix": matrix.tolist()}
    return result
