"""Hosted LLM runs through the Groq API: prompts rendered from a table, sent with retries.

The API key comes from ``GROQ_API_KEY``. It is not stored in the execution
parameters, and this module replaces it with ``[redacted]`` in every error text
that it raises, logs or writes to the output file.

Tuning comes from the environment when an execution is prepared, and is stored
with the execution so that a run can be repeated with the same settings:

- ``MLHUB_GROQ_CONCURRENCY``: requests in flight at once (default 4).
- ``MLHUB_GROQ_MAX_RETRIES``: retries of a request after a 429, a 5xx, a
  timeout, a connection error or a malformed body (default 5).
- ``MLHUB_GROQ_MAX_BACKOFF``: the longest wait before a retry, in seconds
  (default 30), which also caps a ``retry-after`` header.
- ``MLHUB_GROQ_TIMEOUT``: seconds one request may take (default 60).
- ``MLHUB_GROQ_CONTINUE_ON_ERROR``: ``true`` records a failed row and goes on,
  ``false`` fails the run at the first failed row (default true).
"""

import email.utils
import json
import logging
import os
import random
import re
import string
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pyarrow as pa
import pyarrow.parquet as pq

from mlhub_mcp.errors import ConfigurationError, ExecutionFailed, InvalidInput, SchemaMismatch
from mlhub_mcp.execution._llm_metrics import llm_metrics

logger = logging.getLogger(__name__)

Progress = Callable[[float, float | None, str | None], Awaitable[None]]

API_KEY_ENV = "GROQ_API_KEY"
BASE_URL_ENV = "GROQ_BASE_URL"
INSTALL_HINT = "pip install 'mlhub-mcp[groq]'"
REDACTED = "[redacted]"

DEFAULT_TEMPERATURE = 0.0
DEFAULT_MAX_TOKENS = 256
MAX_COMPLETION_TOKENS = 32_768
MAX_TEMPLATE_CHARS = 100_000
LLM_KEYS = ("prompt_template", "system_prompt", "temperature", "max_tokens")

# HTTP statuses after which every other row would fail the same way, because
# the key is rejected (401), lacks access (403) or the model id is unknown (404).
_RUN_FATAL_STATUSES = (401, 403, 404)
_FIRST_BACKOFF_SECONDS = 0.5
_PROGRESS_EVERY_ROWS = 10
_PROGRESS_EVERY_SECONDS = 1.0
_LOGGED_ROW_FAILURES = 5


# Settings


def _env_number(name: str, default: float, minimum: float, maximum: float, kind: type) -> Any:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return kind(default)

    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not minimum <= value <= maximum:
        noun = "an integer" if kind is int else "a number"
        raise ConfigurationError(
            f"{name}={raw!r} is invalid; set it to {noun} from {minimum} to {maximum} or unset it"
        )

    return value


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False

    raise ConfigurationError(f"{name}={raw!r} is invalid; set it to true or false or unset it")


def _run_settings() -> dict[str, Any]:
    return {
        "concurrency": _env_number("MLHUB_GROQ_CONCURRENCY", 4, 1, 256, int),
        "max_retries": _env_number("MLHUB_GROQ_MAX_RETRIES", 5, 0, 20, int),
        "max_backoff_seconds": _env_number("MLHUB_GROQ_MAX_BACKOFF", 30.0, 0.0, 600.0, float),
        "timeout_seconds": _env_number("MLHUB_GROQ_TIMEOUT", 60.0, 0.001, 3600.0, float),
        "continue_on_error": _env_bool("MLHUB_GROQ_CONTINUE_ON_ERROR", True),
    }


def _api_key() -> str:
    key = os.environ.get(API_KEY_ENV, "").strip()
    if not key:
        raise InvalidInput(
            f"set {API_KEY_ENV} to run LLM deployments; "
            "registering and deploying an LLM work without it"
        )
    return key


def _import_groq() -> Any:
    try:
        import groq
    except ImportError as exc:
        raise InvalidInput(
            f"LLM deployments need the groq package, which is not installed; run {INSTALL_HINT}"
        ) from exc
    return groq


def _scrub(text: str, key: str | None) -> str:
    """Replace the API key in ``text``, so that an error can be shown or stored."""
    return text.replace(key, REDACTED) if key else text


# Validation


def validate_llm_parameters(llm: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    """Check the LLM options of an execution and return them with defaults and run settings.

    Args:
        llm: ``prompt_template`` (required), ``system_prompt``, ``temperature``
            and ``max_tokens``.
        columns: The dataset's column names and Arrow type names.

    Returns:
        The options plus ``concurrency``, ``max_retries``, ``max_backoff_seconds``,
        ``timeout_seconds`` and ``continue_on_error`` from the environment. The
        API key is not among them.

    Raises:
        InvalidInput: An option is invalid, ``GROQ_API_KEY`` is not set, or the
            groq package is missing.
        SchemaMismatch: A placeholder of the template is not a dataset column.
    """
    _import_groq()
    _api_key()

    unknown = sorted(set(llm) - set(LLM_KEYS))
    if unknown:
        raise InvalidInput(f"unknown LLM options {unknown}; the options are {list(LLM_KEYS)}")

    template = llm.get("prompt_template")
    if not isinstance(template, str) or not template.strip():
        raise InvalidInput(
            "'prompt_template' is required for an LLM deployment: a prompt with {column} "
            "placeholders, e.g. 'Classify the sentiment: {text}'. "
            f"Dataset columns: {list(columns)}"
        )
    _check_template(template, columns)

    system_prompt = llm.get("system_prompt")
    if system_prompt is not None and not isinstance(system_prompt, str):
        raise InvalidInput(f"'system_prompt' must be a string, not {type(system_prompt).__name__}")

    return {
        "prompt_template": template,
        "system_prompt": system_prompt or None,
        "temperature": _check_temperature(llm.get("temperature", DEFAULT_TEMPERATURE)),
        "max_tokens": _check_max_tokens(llm.get("max_tokens", DEFAULT_MAX_TOKENS)),
        **_run_settings(),
    }


def _check_temperature(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 2:
        raise InvalidInput(f"'temperature' must be a number from 0 to 2, not {value!r}")
    return float(value)


def _check_max_tokens(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"'max_tokens' must be an integer, not {value!r}")
    if not 1 <= value <= MAX_COMPLETION_TOKENS:
        raise InvalidInput(f"'max_tokens' must be from 1 to {MAX_COMPLETION_TOKENS}, not {value}")
    return value


def _placeholders(template: str) -> list[str]:
    """Return the field names of a format string, including those nested in format specs."""
    names: list[str] = []
    for _, name, format_spec, _ in string.Formatter().parse(template):
        if name is not None:
            names.append(name)
        if format_spec:
            names.extend(_placeholders(format_spec))

    return names


def _check_template(template: str, columns: dict[str, str]) -> None:
    if len(template) > MAX_TEMPLATE_CHARS:
        raise InvalidInput(
            f"'prompt_template' has {len(template)} characters; the maximum is {MAX_TEMPLATE_CHARS}"
        )

    try:
        names = _placeholders(template)
    except ValueError as exc:
        raise InvalidInput(
            f"'prompt_template' is not a valid format string ({exc}); "
            "write a literal brace as {{ or }}"
        ) from exc

    if not names:
        raise InvalidInput(
            "'prompt_template' has no {column} placeholder, so every row would send the same "
            f"prompt; dataset columns: {list(columns)}"
        )

    for name in names:
        if name == "" or name.isdigit():
            raise InvalidInput(
                f"'prompt_template' has a positional placeholder {{{name}}}; "
                f"name a column instead, one of {list(columns)}"
            )
        if re.search(r"[.\[]", name):
            raise InvalidInput(
                f"'prompt_template' placeholder {{{name}}} uses attribute or index access, "
                "which is not supported; use a plain {column}"
            )
        if name not in columns:
            raise SchemaMismatch(
                f"'prompt_template' placeholder {{{name}}} is not a column of the dataset; "
                f"its columns: {list(columns)}"
            )

    sample = {name: 0 if _is_numeric(columns[name]) else "" for name in names}
    try:
        template.format_map(sample)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"'prompt_template' cannot be rendered: {exc}") from exc


def _is_numeric(type_name: str) -> bool:
    return type_name.startswith(("int", "uint", "float", "double", "decimal", "halffloat"))


class _RowValues(dict[str, Any]):
    """Row values for ``str.format_map``; a missing column renders as an empty string."""

    def __missing__(self, key: str) -> str:
        return ""


def render_prompt(template: str, row: dict[str, Any]) -> str:
    """Fill ``template`` with a row's values; a null value renders as an empty string."""
    values = _RowValues({name: "" if value is None else value for name, value in row.items()})
    return template.format_map(values)


# Requests


@dataclass
class Completion:
    """A successful chat completion of one prompt."""

    output: str
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    latency_ms: float
    attempts: int


class RequestFailed(Exception):
    """A request that failed after its retries; the message contains no API key."""

    def __init__(self, message: str, attempts: int, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.attempts = attempts
        self.fatal = fatal


class _MalformedResponse(Exception):
    """The response body is not a chat completion."""


@dataclass(frozen=True)
class _RequestOptions:
    provider_model: str
    temperature: float
    max_tokens: int
    max_retries: int
    max_backoff_seconds: float
    timeout_seconds: float
    api_key: str


@asynccontextmanager
async def _open_client(options: _RequestOptions) -> AsyncIterator[Any]:
    groq = _import_groq()
    # The SDK's own retries are off because complete() retries with its own
    # limits and records every attempt.
    client = groq.AsyncGroq(
        api_key=options.api_key,
        base_url=os.environ.get(BASE_URL_ENV) or None,
        max_retries=0,
        timeout=options.timeout_seconds,
    )
    async with client:
        yield client


async def complete(
    client: Any, messages: list[dict[str, str]], options: _RequestOptions
) -> Completion:
    """Send one chat completion request, retrying 429, 5xx, timeouts and malformed bodies.

    Raises:
        RequestFailed: The request failed after ``options.max_retries`` retries, or
            failed in a way a retry cannot fix.
    """
    groq = _import_groq()
    attempts = 0
    while True:
        attempts += 1
        retry_after = None
        started = time.perf_counter()
        try:
            response = await client.chat.completions.create(
                model=options.provider_model,
                messages=messages,
                temperature=options.temperature,
                max_completion_tokens=options.max_tokens,
            )
            latency_ms = (time.perf_counter() - started) * 1000
            return _read_completion(response, latency_ms, attempts)
        except groq.APIStatusError as exc:
            error = _scrub(_status_text(exc), options.api_key)
            if exc.status_code in _RUN_FATAL_STATUSES:
                raise RequestFailed(error, attempts, fatal=True) from None
            if exc.status_code != 429 and exc.status_code < 500:
                raise RequestFailed(error, attempts) from None
            retry_after = _retry_after_seconds(exc.response.headers)
        except groq.APITimeoutError:
            error = f"timed out after {options.timeout_seconds:g} s"
        except groq.APIConnectionError as exc:
            error = _scrub(f"connection failed: {exc.__cause__ or exc}", options.api_key)
        except (_MalformedResponse, groq.APIResponseValidationError, json.JSONDecodeError) as exc:
            error = _scrub(f"malformed response body: {exc}", options.api_key)

        if attempts > options.max_retries:
            raise RequestFailed(f"{error} (after {attempts} attempts)", attempts)

        delay = _backoff_seconds(attempts, retry_after, options.max_backoff_seconds)
        logger.debug("groq request failed: %s; retry %d in %.2f s", error, attempts, delay)
        await anyio.sleep(delay)


def _read_completion(response: Any, latency_ms: float, attempts: int) -> Completion:
    try:
        content = response.choices[0].message.content
    except (AttributeError, IndexError, TypeError, KeyError) as exc:
        raise _MalformedResponse(f"no choices[0].message.content ({type(exc).__name__})") from None
    if not isinstance(content, str):
        raise _MalformedResponse(f"message content is {type(content).__name__}, not a string")

    usage = getattr(response, "usage", None)
    return Completion(
        output=content,
        prompt_tokens=_token_count(usage, "prompt_tokens"),
        completion_tokens=_token_count(usage, "completion_tokens"),
        total_tokens=_token_count(usage, "total_tokens"),
        latency_ms=round(latency_ms, 3),
        attempts=attempts,
    )


def _token_count(usage: Any, name: str) -> int | None:
    value = getattr(usage, name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _status_text(exc: Any) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        detail = inner.get("message") if isinstance(inner, dict) else None
        if isinstance(detail, str):
            return f"HTTP {exc.status_code}: {detail}"

    return f"HTTP {exc.status_code}: {exc.message}"


def _retry_after_seconds(headers: Any) -> float | None:
    """Read ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            return max(0.0, float(milliseconds) / 1000)
        except ValueError:
            pass

    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass

    try:
        moment = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def _backoff_seconds(attempt: int, retry_after: float | None, maximum: float) -> float:
    """Return the wait before retry ``attempt``: the server's ``retry-after``, else
    exponential backoff with jitter, capped at ``maximum``."""
    if retry_after is not None:
        return min(retry_after, maximum)

    exponential = _FIRST_BACKOFF_SECONDS * 2 ** (attempt - 1)
    return min(exponential * random.uniform(0.75, 1.0), maximum)


def _request_options(
    model_doc: dict[str, Any], llm: dict[str, Any], api_key: str
) -> _RequestOptions:
    if model_doc.get("kind") != "llm" or model_doc.get("provider") != "groq":
        raise InvalidInput(f"model {model_doc.get('name')!r} is not a hosted Groq LLM")
    if not model_doc.get("provider_model"):
        raise InvalidInput(f"model {model_doc.get('name')!r} has no provider_model")

    return _RequestOptions(
        provider_model=model_doc["provider_model"],
        temperature=llm["temperature"],
        max_tokens=llm["max_tokens"],
        max_retries=llm["max_retries"],
        max_backoff_seconds=llm["max_backoff_seconds"],
        timeout_seconds=llm["timeout_seconds"],
        api_key=api_key,
    )


def _messages(prompt: str, system_prompt: str | None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": prompt})
    return messages


async def chat(
    model_doc: dict[str, Any],
    prompt: str,
    system_prompt: str | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> dict[str, Any]:
    """Send one prompt to a hosted LLM, with the same retries as a run.

    Returns:
        ``output``, ``usage`` (prompt, completion and total tokens),
        ``latency_ms`` of the successful request and ``model``, the provider's model id.

    Raises:
        InvalidInput: ``GROQ_API_KEY`` is not set, an option is invalid, or the
            model is not a hosted LLM.
        ExecutionFailed: The request failed after its retries.
    """
    api_key = _api_key()
    llm = {
        "temperature": _check_temperature(temperature),
        "max_tokens": _check_max_tokens(max_tokens),
        **_run_settings(),
    }
    options = _request_options(model_doc, llm, api_key)

    try:
        async with _open_client(options) as client:
            completion = await complete(client, _messages(prompt, system_prompt), options)
    except RequestFailed as exc:
        raise ExecutionFailed(
            f"chat request to {options.provider_model!r} failed: {exc.message}"
        ) from None

    return {
        "output": completion.output,
        "usage": {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.total_tokens,
        },
        "latency_ms": completion.latency_ms,
        "model": options.provider_model,
    }


# Runs


@dataclass
class RowResult:
    """The outcome of one dataset row."""

    row: int
    prompt: str | None
    output: str | None = None
    error: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    latency_ms: float | None = None
    attempts: int = 0


def output_schema(label_type: pa.DataType | None) -> pa.Schema:
    """Return the schema of an LLM run's output, with a label column when one is given."""
    fields = [
        pa.field("row", pa.int64()),
        pa.field("prompt", pa.string()),
        pa.field("output", pa.string()),
        pa.field("error", pa.string()),
        pa.field("prompt_tokens", pa.int64()),
        pa.field("completion_tokens", pa.int64()),
        pa.field("total_tokens", pa.int64()),
        pa.field("latency_ms", pa.float64()),
        pa.field("attempts", pa.int64()),
    ]
    if label_type is not None:
        fields.append(pa.field("label", label_type))

    return pa.schema(fields)


class _LLMRun:
    """Sends the rows of one execution and keeps its counters."""

    def __init__(
        self,
        options: _RequestOptions,
        llm: dict[str, Any],
        total_rows: int,
        progress: Progress,
    ) -> None:
        self.options = options
        self.template: str = llm["prompt_template"]
        self.system_prompt: str | None = llm.get("system_prompt")
        self.concurrency: int = llm["concurrency"]
        self.continue_on_error: bool = llm["continue_on_error"]
        self.total_rows = total_rows
        self.progress = progress
        self.done = 0
        self.failed = 0
        self.fatal: ExecutionFailed | None = None
        self._reported_rows = 0
        self._reported_at = time.monotonic()

    async def run_batch(
        self, client: Any, rows: list[dict[str, Any]], first_row: int
    ) -> list[RowResult]:
        """Send the rows of one batch with ``concurrency`` requests in flight.

        Raises:
            ExecutionFailed: A row failed and ``continue_on_error`` is false, or
                the provider rejected the key or the model.
        """
        results: list[RowResult] = [RowResult(first_row + i, None) for i in range(len(rows))]
        pending = iter(enumerate(rows))

        async def worker(group: anyio.abc.TaskGroup) -> None:
            # The workers share one iterator on one event loop thread, so each
            # row is taken once.
            for index, row in pending:
                results[index] = await self._run_row(client, row, first_row + index)
                if self.fatal is not None:
                    group.cancel_scope.cancel()
                    return

        async with anyio.create_task_group() as group:
            for _ in range(min(self.concurrency, len(rows))):
                group.start_soon(worker, group)

        if self.fatal is not None:
            raise self.fatal

        return results

    async def _run_row(self, client: Any, row: dict[str, Any], number: int) -> RowResult:
        result = RowResult(number, None)
        try:
            result.prompt = render_prompt(self.template, row)
        except (ValueError, TypeError) as exc:
            self._record_failure(result, f"prompt template failed on this row: {exc}", 0)
            return await self._row_done(result)

        started = time.perf_counter()
        try:
            completion = await complete(
                client, _messages(result.prompt, self.system_prompt), self.options
            )
        except RequestFailed as exc:
            result.latency_ms = round((time.perf_counter() - started) * 1000, 3)
            self._record_failure(result, exc.message, exc.attempts, fatal=exc.fatal)
        else:
            result.output = completion.output
            result.prompt_tokens = completion.prompt_tokens
            result.completion_tokens = completion.completion_tokens
            result.total_tokens = completion.total_tokens
            result.latency_ms = completion.latency_ms
            result.attempts = completion.attempts

        return await self._row_done(result)

    async def _row_done(self, result: RowResult) -> RowResult:
        self.done += 1
        await self._report_progress()
        return result

    def _record_failure(
        self, result: RowResult, error: str, attempts: int, fatal: bool = False
    ) -> None:
        result.error = _scrub(error, self.options.api_key)
        result.attempts = attempts
        self.failed += 1
        if self.failed <= _LOGGED_ROW_FAILURES:
            logger.warning("llm row %d failed: %s", result.row, result.error)
        if self.failed == _LOGGED_ROW_FAILURES:
            logger.warning("not logging further failed rows; the output file contains each error")

        if fatal:
            self.fatal = ExecutionFailed(
                f"the provider rejected the request for row {result.row}: {result.error}; "
                f"check {API_KEY_ENV} and the model id {self.options.provider_model!r}"
            )
        elif not self.continue_on_error and self.fatal is None:
            self.fatal = ExecutionFailed(
                f"row {result.row} failed: {result.error}; the run stops at the first "
                "failed row because MLHUB_GROQ_CONTINUE_ON_ERROR is false"
            )

    async def _report_progress(self) -> None:
        now = time.monotonic()
        due = (
            self.done == self.total_rows
            or self.done - self._reported_rows >= _PROGRESS_EVERY_ROWS
            or now - self._reported_at >= _PROGRESS_EVERY_SECONDS
        )
        if not due:
            return

        self._reported_rows = self.done
        self._reported_at = now
        message = f"{self.done}/{self.total_rows} rows, {self.failed} failed"
        await self.progress(self.done, self.total_rows, message)


def _batch_table(
    results: list[RowResult], labels: pa.Array | pa.ChunkedArray | None, schema: pa.Schema
) -> pa.Table:
    columns: dict[str, Any] = {
        name: [getattr(result, name) for result in results]
        for name in schema.names
        if name != "label"
    }
    if labels is not None:
        columns["label"] = labels

    return pa.table(columns, schema=schema)


async def run_llm(
    model_doc: dict[str, Any],
    dataset_path: Path,
    parameters: dict[str, Any],
    output_path: Path,
    progress: Progress,
) -> tuple[int, dict[str, Any]]:
    """Render a prompt for each dataset row, send it to the LLM and write the replies.

    The output Parquet file has one row per dataset row (see ``output_schema``).
    A row that fails after its retries keeps a null output and its error, and
    the run goes on unless ``continue_on_error`` is false.

    Returns:
        The number of rows and the metrics (see ``llm_metrics``).

    Raises:
        InvalidInput: ``GROQ_API_KEY`` is not set or the model is not a hosted LLM.
        ExecutionFailed: The provider rejected the key or the model, a row
            failed with ``continue_on_error`` false, or every row failed.
    """
    llm = parameters["llm"]
    label_column: str | None = parameters.get("label_column")
    batch_size = int(parameters.get("batch_size") or 256)
    options = _request_options(model_doc, llm, _api_key())
    started = time.perf_counter()

    parquet = pq.ParquetFile(dataset_path, pre_buffer=False)
    total_rows = parquet.metadata.num_rows
    columns = list(dict.fromkeys(_placeholders(llm["prompt_template"])))
    label_type = None
    if label_column is not None:
        label_type = parquet.schema_arrow.field(label_column).type
        columns = list(dict.fromkeys([*columns, label_column]))
    schema = output_schema(label_type)

    run = _LLMRun(options, llm, total_rows, progress)
    outputs: list[str | None] = []
    labels: list[Any] = []
    results: list[RowResult] = []
    writer = pq.ParquetWriter(output_path, schema)
    try:
        async with _open_client(options) as client:
            batches = parquet.iter_batches(batch_size=batch_size, columns=columns)
            while (batch := await anyio.to_thread.run_sync(next, batches, None)) is not None:
                batch_results = await run.run_batch(client, batch.to_pylist(), len(results))
                batch_labels = batch.column(label_column) if label_column else None
                table = _batch_table(batch_results, batch_labels, schema)
                await anyio.to_thread.run_sync(writer.write_table, table)

                results.extend(batch_results)
                outputs.extend(r.output for r in batch_results)
                if batch_labels is not None:
                    labels.extend(batch_labels.to_pylist())
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(writer.close)

    if total_rows and run.failed == total_rows:
        first_error = next(r.error for r in results if r.error)
        raise ExecutionFailed(f"all {total_rows} rows failed; the first error: {first_error}")

    duration = time.perf_counter() - started
    metrics = llm_metrics(results, labels if label_column else None, duration)
    logger.info(
        "llm run on %s: %d rows, %d failed, %d retries, %d tokens in %.1f s",
        options.provider_model,
        total_rows,
        run.failed,
        metrics["retries"],
        metrics["total_tokens"],
        duration,
    )
    return total_rows, metrics
