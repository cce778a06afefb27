"""Streaming readers for tabular dataset files.

A registered table is converted to Parquet batch by batch while its schema and
per-column statistics are gathered, so a file is never held whole in memory.
"""

import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from mlhub_mcp.errors import InvalidDatasetFile, InvalidInput

TABLE_FORMATS_BY_SUFFIX = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
READ_BLOCK_BYTES = 4 * 1024 * 1024
_TOP_VALUES_TRACKED = 10_000


def detect_table_format(file_name: str, declared: str | None) -> str:
    """Return the dataset format from ``declared`` or from the file name's suffix.

    Raises:
        InvalidInput: The format is unknown.
    """
    known = sorted(set(TABLE_FORMATS_BY_SUFFIX.values()) | {"npz", "image_archive"})
    if declared:
        if declared not in known:
            raise InvalidInput(f"unknown dataset format {declared!r}; use one of {known}")
        return declared

    name = file_name.lower()
    if name.endswith((".zip", ".tar", ".tar.gz", ".tgz")):
        return "image_archive"
    if name.endswith(".npz"):
        return "npz"

    suffix = Path(name).suffix
    if suffix not in TABLE_FORMATS_BY_SUFFIX:
        raise InvalidInput(
            f"cannot tell the dataset format of {file_name!r} from its suffix; use one of "
            f"{sorted(TABLE_FORMATS_BY_SUFFIX)} or pass 'format'"
        )

    return TABLE_FORMATS_BY_SUFFIX[suffix]


@dataclass
class ColumnStats:
    """Running statistics of one column."""

    name: str
    type: str
    count: int = 0
    null_count: int = 0
    minimum: float | None = None
    maximum: float | None = None
    total: float = 0.0
    total_squares: float = 0.0
    values: Counter[str] = field(default_factory=Counter)
    values_truncated: bool = False

    def add(self, column: pa.ChunkedArray | pa.Array) -> None:
        self.count += len(column)
        self.null_count += column.null_count
        kind = column.type
        if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
            valid = pc.drop_null(column)
            if len(valid) == 0:
                return
            numbers = np.asarray(valid.to_numpy(zero_copy_only=False), dtype=np.float64)
            numbers = numbers[np.isfinite(numbers)]
            if numbers.size == 0:
                return
            low, high = float(numbers.min()), float(numbers.max())
            self.minimum = low if self.minimum is None else min(self.minimum, low)
            self.maximum = high if self.maximum is None else max(self.maximum, high)
            self.total += float(numbers.sum())
            self.total_squares += float(np.square(numbers).sum())
        if not (pa.types.is_floating(kind)):
            self._count_values(column)

    def _count_values(self, column: pa.ChunkedArray | pa.Array) -> None:
        if self.values_truncated:
            return
        counts = pc.value_counts(pc.drop_null(column))
        for item in counts.to_pylist():
            self.values[str(item["values"])] += int(item["counts"])
        if len(self.values) > _TOP_VALUES_TRACKED:
            self.values_truncated = True

    def summary(self) -> dict[str, Any]:
        valid = self.count - self.null_count
        result: dict[str, Any] = {
            "type": self.type,
            "count": self.count,
            "null_count": self.null_count,
        }
        if self.minimum is not None and valid:
            mean = self.total / valid
            variance = max(self.total_squares / valid - mean * mean, 0.0)
            result.update(min=self.minimum, max=self.maximum, mean=mean, std=math.sqrt(variance))
        if self.values:
            result["distinct_count"] = len(self.values)
            result["distinct_count_is_lower_bound"] = self.values_truncated
            result["top_values"] = [
                {"value": value, "count": count} for value, count in self.values.most_common(5)
            ]

        return result


@dataclass
class IngestResult:
    """A table converted to Parquet, with its schema and statistics."""

    row_count: int
    columns: list[dict[str, Any]]
    statistics: dict[str, dict[str, Any]]


def _column_name_in(message: str, schema: pa.Schema | None) -> str:
    match = re.search(r"column #(\d+)", message)
    if match and schema is not None and int(match.group(1)) < len(schema):
        return f" (column {schema.names[int(match.group(1))]!r})"
    return ""


def _csv_batches(path: Path, delimiter: str) -> Iterator[pa.RecordBatch]:
    bad_rows: list[Any] = []

    def on_invalid_row(row: Any) -> str:
        bad_rows.append(row)
        return "error"

    parse = pa_csv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid_row)
    read = pa_csv.ReadOptions(block_size=READ_BLOCK_BYTES)
    reader = None
    try:
        reader = pa_csv.open_csv(path, read_options=read, parse_options=parse)
        yield from reader
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        if bad_rows:
            row = bad_rows[0]
            number = row.number if row.number is not None else _find_line(path, row.text)
            where = f"line {number}" if number is not None else "a row"
            raise InvalidDatasetFile(
                f"CSV parse error at {where}: expected {row.expected_columns} columns, got "
                f"{row.actual_columns}: {row.text[:200]!r}"
            ) from exc
        schema = reader.schema if reader is not None else None
        raise InvalidDatasetFile(
            f"CSV parse error{_column_name_in(str(exc), schema)}: {exc}"
        ) from exc


def _find_line(path: Path, text: str) -> int | None:
    # The streaming CSV reader does not report line numbers, so on error the
    # file is scanned once more for the offending row.
    with path.open("r", encoding="utf-8", errors="replace", newline="") as handle:
        for number, line in enumerate(handle, start=1):
            if line.rstrip("\r\n") == text:
                return number
    return None


def _jsonl_batches(path: Path) -> Iterator[pa.RecordBatch]:
    read = pa_json.ReadOptions(block_size=READ_BLOCK_BYTES)
    try:
        reader = pa_json.open_json(path, read_options=read)
        yield from reader
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InvalidDatasetFile(f"JSON Lines parse error: {exc}") from exc


def _parquet_batches(path: Path) -> Iterator[pa.RecordBatch]:
    try:
        parquet = pq.ParquetFile(path)
        yield from parquet.iter_batches(batch_size=65_536)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidDatasetFile(f"not a valid Parquet file: {exc}") from exc


def source_batches(path: Path, fmt: str) -> Iterator[pa.RecordBatch]:
    """Yield the record batches of a CSV, TSV, JSON Lines or Parquet file."""
    if fmt == "csv":
        return _csv_batches(path, ",")
    if fmt == "tsv":
        return _csv_batches(path, "\t")
    if fmt == "jsonl":
        return _jsonl_batches(path)
    if fmt == "parquet":
        return _parquet_batches(path)

    raise InvalidInput(f"format {fmt!r} is not a table format")


def ingest_table(source: Path, fmt: str, target: Path) -> IngestResult:
    """Convert ``source`` to Parquet at ``target`` batch by batch, gathering statistics.

    Raises:
        InvalidDatasetFile: The file is malformed; the message names the line or column.
    """
    writer: pq.ParquetWriter | None = None
    schema: pa.Schema | None = None
    stats: dict[str, ColumnStats] = {}
    rows = 0
    try:
        for batch in source_batches(source, fmt):
            if writer is None:
                schema = batch.schema
                _check_column_names(schema)
                writer = pq.ParquetWriter(target, schema, compression="zstd")
                stats = {f.name: ColumnStats(f.name, str(f.type)) for f in schema}
            elif not batch.schema.equals(schema):
                raise InvalidDatasetFile(
                    f"the column types change after row {rows}: {schema} then {batch.schema}"
                )
            writer.write_batch(batch)
            for name, column in zip(batch.schema.names, batch.columns, strict=True):
                stats[name].add(column)
            rows += batch.num_rows
    finally:
        if writer is not None:
            writer.close()

    if schema is None or rows == 0:
        raise InvalidDatasetFile("the file holds no rows")

    columns = [
        {"name": f.name, "type": str(f.type), "null_count": stats[f.name].null_count}
        for f in schema
    ]
    return IngestResult(
        row_count=rows,
        columns=columns,
        statistics={name: s.summary() for name, s in stats.items()},
    )


def _check_column_names(schema: pa.Schema) -> None:
    seen: set[str] = set()
    for name in schema.names:
        if not name:
            raise InvalidDatasetFile("a column has an empty name; every column needs a header")
        if name in seen:
            raise InvalidDatasetFile(f"column {name!r} appears twice in the header")
        seen.add(name)


def read_rows(path: Path, limit: int, columns: list[str] | None = None) -> list[dict[str, Any]]:
    """Return the first ``limit`` rows of a Parquet file as JSON-ready dicts."""
    parquet = pq.ParquetFile(path)
    rows: list[dict[str, Any]] = []
    for batch in parquet.iter_batches(batch_size=max(limit, 1), columns=columns):
        rows.extend(batch.to_pylist())
        if len(rows) >= limit:
            break

    return [{k: _json_safe(v) for k, v in row.items()} for row in rows[:limit]]


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value
