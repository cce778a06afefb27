"""Metrics of an execution, computed with scikit-learn, and the confusion-matrix plot."""

import io
import math
from collections import Counter
from typing import Any

import numpy as np


def _sklearn_metrics() -> Any:
    # Imported on first use: scikit-learn adds about a second and 150 MiB to
    # the start of every execution server otherwise.
    from sklearn import metrics

    return metrics


def _aligned(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Labels read from a CSV may be integers while an ONNX model returns
    # strings (or the reverse); compare them as strings then.
    if y_true.dtype.kind != y_pred.dtype.kind and "U" in (y_true.dtype.kind, y_pred.dtype.kind):
        return y_true.astype(str), y_pred.astype(str)
    if y_true.dtype.kind in "OU" or y_pred.dtype.kind in "OU":
        return y_true.astype(str), y_pred.astype(str)
    return y_true, y_pred


# Maximum number of classes for which the confusion matrix is stored, and for
# which it is drawn. Past them the matrix is too large to read or to send.
MAX_MATRIX_CLASSES = 100
MAX_PLOT_CLASSES = 50


class LabelTally:
    """Counts of (label, prediction) pairs gathered batch by batch.

    Classification metrics depend only on these counts, so a run keeps memory
    per pair of classes rather than per row. scikit-learn then scores the
    distinct pairs weighted by their counts.
    """

    def __init__(self) -> None:
        self.counts: Counter[tuple[Any, Any]] = Counter()

    def add(self, y_true: np.ndarray, y_pred: np.ndarray) -> None:
        y_true, y_pred = _aligned(np.asarray(y_true), np.asarray(y_pred))
        numeric = y_true.dtype.kind in "iub" and y_pred.dtype.kind in "iub"
        if numeric and len(y_true):
            self._add_integers(y_true.astype(np.int64), y_pred.astype(np.int64))
        else:
            self.counts.update(zip(y_true.tolist(), y_pred.tolist(), strict=True))

    def _add_integers(self, y_true: np.ndarray, y_pred: np.ndarray) -> None:
        # Each (label, prediction) pair becomes one integer code, so that a
        # one-dimensional count replaces a much slower row-wise unique.
        true_low, pred_low = int(y_true.min()), int(y_pred.min())
        width = int(y_pred.max()) - pred_low + 1
        codes = (y_true - true_low) * width + (y_pred - pred_low)
        if int(codes.max()) < 1_000_000:
            counts = np.bincount(codes)
            distinct = np.flatnonzero(counts)
            counts = counts[distinct]
        else:
            distinct, counts = np.unique(codes, return_counts=True)

        for code, count in zip(distinct.tolist(), counts.tolist(), strict=True):
            label, prediction = divmod(code, width)
            self.counts[(label + true_low, prediction + pred_low)] += count

    def metrics(self) -> dict[str, Any] | None:
        if not self.counts:
            return None
        pairs = list(self.counts)
        y_true = np.array([label for label, _ in pairs])
        y_pred = np.array([prediction for _, prediction in pairs])
        weights = np.array([self.counts[pair] for pair in pairs], dtype=np.int64)
        return classification_metrics(y_true, y_pred, sample_weight=weights)


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, sample_weight: np.ndarray | None = None
) -> dict[str, Any]:
    """Return accuracy, macro and weighted precision/recall/F1, and the confusion matrix.

    ``sample_weight`` counts each row that many times, as for the distinct
    pairs of a ``LabelTally``.
    """
    skm = _sklearn_metrics()
    y_true, y_pred = _aligned(y_true, y_pred)
    labels = np.unique(np.concatenate([y_true, y_pred]))
    accuracy = skm.accuracy_score(y_true, y_pred, sample_weight=sample_weight)
    result: dict[str, Any] = {"accuracy": float(accuracy)}
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = skm.precision_recall_fscore_support(
            y_true, y_pred, average=average, zero_division=0, sample_weight=sample_weight
        )
        result[f"precision_{average}"] = float(precision)
        result[f"recall_{average}"] = float(recall)
        result[f"f1_{average}"] = float(f1)

    result["classes"] = len(labels)
    if len(labels) <= MAX_MATRIX_CLASSES:
        matrix = skm.confusion_matrix(y_true, y_pred, labels=labels, sample_weight=sample_weight)
        result["confusion_matrix"] = {
            "labels": [_plain(v) for v in labels],
            "matrix": matrix.tolist(),
        }
    else:
        result["confusion_matrix"] = None
        result["note"] = (
            f"{len(labels)} distinct classes: the confusion matrix is left out above "
            f"{MAX_MATRIX_CLASSES}; check that the label column holds classes"
        )

    common = np.intersect1d(np.unique(y_true), np.unique(y_pred))
    if len(common) == 0:
        result["warning"] = (
            "no predicted value matches any label value (predictions look like "
            f"{[_plain(v) for v in np.unique(y_pred)[:3]]}, labels like "
            f"{[_plain(v) for v in np.unique(y_true)[:3]]}); check the label column "
            "and the classes the model was trained on"
        )
    return result


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """Return MAE, MSE, RMSE and R²."""
    skm = _sklearn_metrics()
    y_true = y_true.astype(np.float64)
    y_pred = y_pred.astype(np.float64)
    mse = float(skm.mean_squared_error(y_true, y_pred))
    return {
        "mae": float(skm.mean_absolute_error(y_true, y_pred)),
        "mse": mse,
        "rmse": math.sqrt(mse),
        "r2": float(skm.r2_score(y_true, y_pred)) if len(y_true) > 1 else None,
    }


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def confusion_matrix_png(confusion: dict[str, Any], title: str) -> bytes:
    """Draw a confusion matrix as a PNG image."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    labels = [str(v) for v in confusion["labels"]]
    matrix = np.asarray(confusion["matrix"])
    size = max(4.0, 0.45 * len(labels) + 2.0)
    figure = Figure(figsize=(size, size), dpi=100)
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)

    axes.set_xticks(range(len(labels)), labels=labels, rotation=45)
    axes.set_yticks(range(len(labels)), labels=labels)
    axes.set_xlabel("Predicted label")
    axes.set_ylabel("True label")
    axes.set_title(title)

    if len(labels) <= 20:
        threshold = matrix.max() / 2 if matrix.size else 0
        for row in range(matrix.shape[0]):
            for col in range(matrix.shape[1]):
                color = "white" if matrix[row, col] > threshold else "black"
                axes.text(col, row, str(matrix[row, col]), ha="center", va="center", color=color)

    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
