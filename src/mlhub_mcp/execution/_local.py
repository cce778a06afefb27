"""The local engine: streams a Parquet dataset through a model in batches."""

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mlhub_mcp.execution._metrics import LabelTally
from mlhub_mcp.models._formats import Predictor


class CancelRequested(Exception):
    """A request to cancel the running execution arrived through the catalog."""


_ROW_GROUP_ROWS = 65_536


@dataclass
class RunSpec:
    """Input, batching and output of one execution."""

    dataset_path: Path
    feature_columns: list[str]
    label_column: str | None
    batch_size: int
    output_path: Path
    total_rows: int
    # "classification" makes the local engine count (label, prediction) pairs
    # instead of keeping every row's values for the metrics.
    task_type: str = ""


@dataclass
class RunOutput:
    """Predictions and labels gathered for the metrics.

    An engine either keeps the arrays or, for classification, fills ``tally``.
    """

    rows: int = 0
    predictions: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    tally: LabelTally | None = None

    def arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
        predictions = np.concatenate(self.predictions) if self.predictions else np.array([])
        labels = np.concatenate(self.labels) if self.labels else None
        return predictions, labels


def feature_matrix(batch: pa.RecordBatch, columns: list[str]) -> np.ndarray:
    """Stack the feature columns of ``batch`` into a float32 matrix (nulls become NaN)."""
    arrays = [
        batch.column(name).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        for name in columns
    ]
    return np.column_stack(arrays) if arrays else np.empty((batch.num_rows, 0), np.float32)


def prediction_table(
    start: int,
    predictions: np.ndarray,
    scores: np.ndarray | None,
    labels: np.ndarray | None,
) -> pa.Table:
    columns: dict[str, Any] = {
        "row": pa.array(np.arange(start, start + len(predictions), dtype=np.int64)),
        "prediction": pa.array(predictions),
    }
    if scores is not None:
        columns["score"] = pa.array(scores.astype(np.float32))
    if labels is not None:
        columns["label"] = pa.array(labels)

    return pa.table(columns)


class BatchRunner:
    """Runs the batches of one execution; every method runs in a worker thread."""

    def __init__(self, predictor: Predictor, spec: RunSpec) -> None:
        self.predictor = predictor
        self.spec = spec
        self.output = RunOutput()
        if spec.task_type == "classification" and spec.label_column:
            self.output.tally = LabelTally()
        columns = list(spec.feature_columns)
        if spec.label_column:
            columns.append(spec.label_column)
        parquet = pq.ParquetFile(spec.dataset_path, pre_buffer=False)
        self._batches = parquet.iter_batches(batch_size=spec.batch_size, columns=columns)
        self._writer: pq.ParquetWriter | None = None
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self.finished = False

    def step(self, time_budget: float = 0.05) -> int:
        """Run batches for about ``time_budget`` seconds; return the rows done so far.

        Working in slices keeps progress reports and cancellation prompt without
        paying a thread switch for every small batch.
        """
        deadline = time.perf_counter() + time_budget
        while time.perf_counter() < deadline:
            batch = next(self._batches, None)
            if batch is None:
                self.finished = True
                break
            self._run_batch(batch)

        return self.output.rows

    def _run_batch(self, batch: pa.RecordBatch) -> None:
        features = feature_matrix(batch, self.spec.feature_columns)
        predictions, scores = self.predictor.predict(features)

        labels = None
        if self.spec.label_column:
            labels = batch.column(self.spec.label_column).to_numpy(zero_copy_only=False)
            if self.output.tally is not None:
                self.output.tally.add(labels, predictions)
            else:
                self.output.labels.append(labels)
                self.output.predictions.append(predictions)

        table = prediction_table(self.output.rows, predictions, scores, labels)
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if self._pending_rows >= _ROW_GROUP_ROWS:
            self._flush()
        self.output.rows += batch.num_rows

    def _flush(self) -> None:
        # Small batches are gathered into row groups of about 64k rows: a row
        # group per batch made the file's metadata grow with every batch and
        # cost both memory and time.
        if not self._pending:
            return
        table = pa.concat_tables(self._pending)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.spec.output_path, table.schema)
        self._writer.write_table(table)
        self._pending = []
        self._pending_rows = 0

    def close(self) -> None:
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
