"""Streaming readers for tabular dataset files.

A registered table is converted to Parquet batch by batch while its schema and
per-column statistics are gathered, so a file is never held whole in memory.
"""

import logging
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

logger = logging.getLogger(__name__)

TABLE_FORMATS_BY_SUFFIX = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
# 1 MiB blocks keep the reader near 40 MiB; 4 MiB blocks needed about 150 MiB.
READ_BLOCK_BYTES = 1024 * 1024
_TOP_VALUES_TRACKED = 10_000
# The first block of a CSV file sets the column types. When a later value does
# not fit, the file is read again with that column widened, at most this often.
MAX_CSV_REREADS = 20
# Bytes read from the start of a file to tell text from binary content.
_SNIFF_BYTES = 64 * 1024
# Maximum length of the part of a row, and of a pyarrow message, quoted in an error.
_QUOTED_CHARS = 200
_MESSAGE_CHARS = 500
_CONVERSION_ERROR = re.compile(
    r"In CSV column #(\d+): CSV conversion error to (\S+): invalid value '(.*)'\Z", re.DOTALL
)
_RAGGED_ROW_ERROR = re.compile(r"Expected (\d+) columns, got (\d+): (.*)\Z", re.DOTALL)


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
        if pa.types.is_nested(kind):
            # value_counts has no kernel for list, struct or map columns.
            return

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


def _quote(text: str) -> str:
    """Return ``text`` shortened and quoted, with control and binary characters escaped."""
    if len(text) > _QUOTED_CHARS:
        return f"{text[:_QUOTED_CHARS]!r}..."
    return repr(text)


def _arrow_message(exc: Exception, prefix: str) -> str:
    """Return the message of a pyarrow error without ``prefix``, shortened and escaped."""
    message = str(exc).removeprefix(prefix)
    shown = message[:_MESSAGE_CHARS]
    escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in shown)
    return escaped if len(message) <= _MESSAGE_CHARS else f"{escaped}..."


def _check_text_file(path: Path, kind: str) -> bytes:
    """Return the first bytes of ``path`` after rejecting Parquet or other binary content."""
    with path.open("rb") as handle:
        head = handle.read(_SNIFF_BYTES)

    if head.startswith(b"PAR1"):
        raise InvalidDatasetFile(
            f"the file is a Parquet file, not {kind}; give it a .parquet name or pass "
            "format='parquet'"
        )

    if b"\x00" in head:
        raise InvalidDatasetFile(
            f"the file is not {kind} text: it contains NUL bytes in its first "
            f"{len(head)} bytes; check the file and the format"
        )

    return head


def _long_line_error() -> InvalidDatasetFile:
    block_mib = READ_BLOCK_BYTES // (1024 * 1024)
    return InvalidDatasetFile(
        f"a line of the file is longer than the reader's block size of {block_mib} MiB, so it "
        "cannot be parsed; convert the file to Parquet (for example with pandas or pyarrow) "
        "and register that, or shorten the long values"
    )


class _TypeChange(Exception):
    """A CSV value does not fit the type inferred from the first block."""

    def __init__(self, column: str, wider: pa.DataType, value: str) -> None:
        super().__init__(column)
        self.column = column
        self.wider = wider
        self.value = value


@dataclass
class _CsvOptions:
    """Options for reading a CSV or TSV file, and the column names an earlier read found."""

    delimiter: str
    column_types: dict[str, pa.DataType] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)


def _wider_type(target: str, value: str) -> pa.DataType | None:
    """Return the type to read a column as when ``value`` failed to convert to ``target``."""
    if target in ("string", "large_string"):
        return None

    if target.startswith(("int", "uint")):
        try:
            float(value)
        except ValueError:
            return pa.string()
        return pa.float64()

    return pa.string()


def _csv_batches(path: Path, options: _CsvOptions) -> Iterator[pa.RecordBatch]:
    kind = "CSV" if options.delimiter == "," else "TSV"
    _check_text_file(path, kind)
    bad_rows: list[tuple[int, int, str]] = []

    # NOTE: pyarrow 26 decodes the row as UTF-8 before it calls this handler.
    # When that fails, it prints "Exception ignored ... UnicodeDecodeError" to
    # stderr and reports the row only in its error message. _check_text_file
    # keeps binary files out, but a ragged row with invalid UTF-8 in a text
    # file still causes that output.
    def on_invalid_row(row: Any) -> str:
        bad_rows.append((row.expected_columns, row.actual_columns, row.text))
        return "error"

    parse = pa_csv.ParseOptions(delimiter=options.delimiter, invalid_row_handler=on_invalid_row)
    read = pa_csv.ReadOptions(block_size=READ_BLOCK_BYTES)
    convert = pa_csv.ConvertOptions(column_types=options.column_types)
    try:
        reader = pa_csv.open_csv(
            path, read_options=read, parse_options=parse, convert_options=convert
        )
        options.names = reader.schema.names
        yield from reader
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise _csv_error(path, exc, options, bad_rows) from exc


def _csv_error(
    path: Path, exc: Exception, options: _CsvOptions, bad_rows: list[tuple[int, int, str]]
) -> Exception:
    """Return the error to raise for a pyarrow CSV error: a _TypeChange or an InvalidDatasetFile."""
    message = str(exc)
    ragged = _RAGGED_ROW_ERROR.search(message)
    if not bad_rows and ragged:
        # The handler was skipped because the row is not UTF-8. pyarrow's
        # message shows the row with replacement characters, cut after about
        # 100 characters.
        bad_rows.append((int(ragged[1]), int(ragged[2]), ragged[3]))

    if bad_rows:
        expected, actual, text = bad_rows[0]
        number = _find_line(path, text)
        where = f"line {number}" if number is not None else "a row"
        return InvalidDatasetFile(
            f"CSV parse error at {where}: expected {expected} columns, got {actual}: {_quote(text)}"
        )

    # pyarrow 26 fails on a header line longer than a block with "Empty CSV
    # file or block", and on a row spanning more than two blocks with
    # "straddling object straddles two block boundaries".
    if "Empty CSV file" in message or "straddles two block boundaries" in message:
        if path.stat().st_size > READ_BLOCK_BYTES:
            return _long_line_error()
        return InvalidDatasetFile("the file contains no rows")

    column = ""
    conversion = _CONVERSION_ERROR.search(message)
    if conversion and int(conversion[1]) < len(options.names):
        name = options.names[int(conversion[1])]
        column = f" (column {name!r})"
        wider = _wider_type(conversion[2], conversion[3])
        if wider is not None and options.column_types.get(name) != wider:
            return _TypeChange(name, wider, conversion[3])

    return InvalidDatasetFile(
        f"CSV parse error{column}: {_arrow_message(exc, 'CSV parse error: ')}"
    )


def _find_line(path: Path, text: str) -> int | None:
    # The streaming CSV reader does not report line numbers, so on error the
    # file is scanned once more for the offending row.
    with path.open("r", encoding="utf-8", errors="replace", newline="") as handle:
        for number, line in enumerate(handle, start=1):
            if line.rstrip("\r\n") == text:
                return number
    return None


def _jsonl_batches(path: Path) -> Iterator[pa.RecordBatch]:
    head = _check_text_file(path, "JSON Lines")
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
        raise InvalidDatasetFile(
            "the file contains a JSON array, but datasets must be JSON Lines: one JSON object "
            'per line, such as {"a": 1}; convert it, for example with '
            "jq -c '.[]' data.json > data.jsonl"
        )

    read = pa_json.ReadOptions(block_size=READ_BLOCK_BYTES)
    try:
        reader = pa_json.open_json(path, read_options=read)
        yield from reader
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        if "straddles two block boundaries" in str(exc):
            raise _long_line_error() from exc
        message = _arrow_message(exc, "JSON parse error: ")
        raise InvalidDatasetFile(f"JSON Lines parse error: {message}") from exc


def _parquet_batches(path: Path) -> Iterator[pa.RecordBatch]:
    try:
        parquet = pq.ParquetFile(path, pre_buffer=False)
        yield from parquet.iter_batches(batch_size=65_536)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidDatasetFile(f"not a valid Parquet file: {exc}") from exc


def source_batches(path: Path, fmt: str) -> Iterator[pa.RecordBatch]:
    """Yield the record batches of a CSV, TSV, JSON Lines or Parquet file."""
    if fmt == "csv":
        return _csv_batches(path, _CsvOptions(","))
    if fmt == "tsv":
        return _csv_batches(path, _CsvOptions("\t"))
    if fmt == "jsonl":
        return _jsonl_batches(path)
    if fmt == "parquet":
        return _parquet_batches(path)

    raise InvalidInput(f"format {fmt!r} is not a table format")


def ingest_table(source: Path, fmt: str, target: Path) -> IngestResult:
    """Convert ``source`` to Parquet at ``target`` batch by batch, gathering statistics.

    A CSV or TSV column whose values stop fitting the type inferred from the
    first block is widened, to float64 from an integer type when the value is
    a number and to string otherwise, and the file is read again.

    Raises:
        InvalidDatasetFile: The file is malformed; the message names the line or column.
    """
    if fmt not in ("csv", "tsv"):
        return _ingest(source_batches(source, fmt), target)

    options = _CsvOptions("," if fmt == "csv" else "\t")
    for _ in range(MAX_CSV_REREADS + 1):
        try:
            return _ingest(_csv_batches(source, options), target)
        except _TypeChange as change:
            logger.info(
                "reading %s again with column %r as %s, because of the value %s",
                source.name,
                change.column,
                change.wider,
                _quote(change.value),
            )
            options.column_types[change.column] = change.wider

    raise InvalidDatasetFile(
        f"the column types still change after {MAX_CSV_REREADS} reads with wider types "
        f"({', '.join(sorted(options.column_types))}); convert the file to Parquet"
    )


def _ingest(batches: Iterator[pa.RecordBatch], target: Path) -> IngestResult:
    writer: pq.ParquetWriter | None = None
    schema: pa.Schema | None = None
    stats: dict[str, ColumnStats] = {}
    rows = 0
    try:
        for batch in batches:
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
    except pa.ArrowException as exc:
        # Readers turn the errors they expect into InvalidDatasetFile, and any
        # other pyarrow error still means the file cannot be ingested.
        message = _arrow_message(exc, "")
        raise InvalidDatasetFile(f"cannot read the file: {type(exc).__name__}: {message}") from exc
    finally:
        if writer is not None:
            writer.close()

    if schema is None or rows == 0:
        raise InvalidDatasetFile("the file contains no rows")

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
    parquet = pq.ParquetFile(path, pre_buffer=False)
    rows: list[dict[str, Any]] = []
    for batch in parquet.iter_batches(batch_size=max(limit, 1), columns=columns):
        rows.extend(batch.to_pylist())
        if len(rows) >= limit:
            break

    return [{k: _json_safe(v) for k, v in row.items()} for row in rows[:limit]]


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value
