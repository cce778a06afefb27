"""The worker side of a sharded run: read a row range, run the model, write the predictions.

Everything here runs in worker threads. The output of a shard has the same
columns as the local engine's output (row, prediction, score, label), with
``row`` counted from the start of the dataset, so the shards concatenated in
order form the output of a single run.
"""

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mlhub_mcp.execution._local import feature_matrix, prediction_table
from mlhub_mcp.models._formats import Predictor


class ShardStopped(Exception):
    """The run was stopped (cancelled, or another shard failed) while this shard ran."""


@dataclass(frozen=True)
class ShardJob:
    """The predictor, files and settings shared by the shards of one run."""

    predictor: Predictor
    dataset_path: Path
    feature_columns: list[str]
    label_column: str | None
    batch_size: int
    stop: threading.Event


@dataclass
class ShardOutput:
    """A finished shard: its Parquet file and the arrays the metrics need."""

    path: Path | None
    rows: int
    predictions: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)


def plan_shards(total_rows: int, count: int) -> list[tuple[int, int]]:
    """Split ``total_rows`` into ``count`` contiguous ranges whose sizes differ by at most one."""
    count = max(1, min(count, total_rows)) if total_rows else 1
    return [(i * total_rows // count, (i + 1) * total_rows // count) for i in range(count)]


def read_range(
    path: Path, columns: list[str], start: int, stop: int, batch_size: int
) -> Iterator[pa.RecordBatch]:
    """Yield the rows ``start`` to ``stop`` of a Parquet file in batches.

    Only the row groups that overlap the range are read, so a shard reads
    about its own share of the file.
    """
    parquet = pq.ParquetFile(path, pre_buffer=False)
    offset = 0
    for group in range(parquet.metadata.num_row_groups):
        size = parquet.metadata.row_group(group).num_rows
        first, last = offset, offset + size
        offset = last
        if last <= start or first >= stop:
            continue
        table = parquet.read_row_group(group, columns=columns)
        table = table.slice(max(start - first, 0), min(stop, last) - max(start, first))
        yield from table.to_batches(max_chunksize=batch_size)


def run_shard(
    job: ShardJob,
    start: int,
    stop: int,
    output_path: Path,
    report: Callable[[int], None],
) -> ShardOutput:
    """Run the model on rows ``start`` to ``stop`` and write their predictions to ``output_path``.

    ``report`` receives the number of rows done after each batch.

    Raises:
        ShardStopped: ``job.stop`` was set between two batches.
    """
    columns = list(job.feature_columns)
    if job.label_column:
        columns.append(job.label_column)

    output = ShardOutput(path=None, rows=0)
    writer: pq.ParquetWriter | None = None
    try:
        for batch in read_range(job.dataset_path, columns, start, stop, job.batch_size):
            if job.stop.is_set():
                raise ShardStopped(f"rows {start}-{stop} stopped after {output.rows} rows")
            predictions, scores = job.predictor.predict(feature_matrix(batch, job.feature_columns))
            labels = None
            if job.label_column:
                labels = batch.column(job.label_column).to_numpy(zero_copy_only=False)
                output.labels.append(labels)
            output.predictions.append(predictions)

            table = prediction_table(start + output.rows, predictions, scores, labels)
            if writer is None:
                writer = pq.ParquetWriter(output_path, table.schema)
                output.path = output_path
            writer.write_table(table)
            output.rows += batch.num_rows
            report(output.rows)
    finally:
        if writer is not None:
            writer.close()

    return output


def merge_outputs(outputs: list[ShardOutput], target: Path) -> bool:
    """Concatenate the shards' Parquet files in order into ``target``.

    Returns whether any shard had rows, because no file is written otherwise.
    """
    writer: pq.ParquetWriter | None = None
    try:
        for output in outputs:
            if output.path is None:
                continue
            table = pq.read_table(output.path)
            if writer is None:
                writer = pq.ParquetWriter(target, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    return writer is not None


def gather(outputs: list[ShardOutput]) -> tuple[np.ndarray, np.ndarray | None]:
    """Return all predictions and labels of the shards, in row order."""
    predictions = [p for o in outputs for p in o.predictions]
    labels = [label for o in outputs for label in o.labels]
    merged = np.concatenate(predictions) if predictions else np.array([])
    return merged, (np.concatenate(labels) if labels else None)
