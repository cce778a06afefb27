"""LLM deployments run through the Groq engine against a local stub of the Groq API.

Every request goes to ``tests/groq_stub.py`` on 127.0.0.1; no test reaches Groq.
"""

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mcp import Client
from mcp.types import CallToolResult

from mlhub_mcp.config import Settings, load_settings
from mlhub_mcp.datasets.server import create_data_server
from mlhub_mcp.errors import ConfigurationError, InvalidInput, SchemaMismatch
from mlhub_mcp.execution._groq import (
    RowResult,
    render_prompt,
    validate_llm_parameters,
)
from mlhub_mcp.execution._groq_tools import register_llm_tools
from mlhub_mcp.execution._llm_metrics import llm_metrics
from mlhub_mcp.execution.server import create_execution_server
from mlhub_mcp.models.server import create_model_server
from tests.groq_stub import Action, Answer, Call, GroqStub, Hang, Malformed, Status, count_tokens

pytest.importorskip("groq")

pytestmark = pytest.mark.anyio

API_KEY = "gsk_stub_9f3c1e7a_do_not_leak"
PROVIDER_MODEL = "llama-3.1-8b-instant"
TEMPLATE = "Review: {text}\nAnswer positive or negative."
SYSTEM_PROMPT = "You label product reviews."

# The stub labels a review positive when it contains "love" or "great", so
# "not great at all" (labelled negative) is the one wrong output.
REVIEWS = [
    ("I love this phone", "positive"),
    ("great battery life", "positive"),
    ("terrible screen", "negative"),
    ("broke after a day", "negative"),
    ("not great at all", "negative"),
    ("works fine, love it", "positive"),
]


def sentiment(call: Call) -> Action:
    """Label a review like a careless model, with odd case and whitespace."""
    if "love" in call.prompt or "great" in call.prompt:
        return Answer("Positive")
    return Answer("  negative \n")


@dataclass
class Hub:
    models: Client
    data: Client
    execution: Client
    settings: Settings


@pytest.fixture
def llm_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the servers at a fresh home and keep retries short; return the import directory."""
    imports = tmp_path / "imports"
    imports.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLHUB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLHUB_IMPORT_DIRS", str(imports))
    monkeypatch.setenv("GROQ_API_KEY", API_KEY)
    monkeypatch.setenv("MLHUB_GROQ_MAX_BACKOFF", "0.05")
    monkeypatch.setenv("MLHUB_GROQ_TIMEOUT", "5")
    for name in (
        "MLHUB_CONFIG",
        "MLHUB_CATALOG",
        "MLHUB_ARTIFACTS",
        "MLHUB_GROQ_CONCURRENCY",
        "MLHUB_GROQ_MAX_RETRIES",
        "MLHUB_GROQ_CONTINUE_ON_ERROR",
    ):
        monkeypatch.delenv(name, raising=False)

    reviews = imports / "reviews.jsonl"
    lines = [json.dumps({"text": text, "label": label}) for text, label in REVIEWS]
    reviews.write_text("\n".join(lines) + "\n")
    return imports


@pytest.fixture
def stub(llm_env: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    with GroqStub(API_KEY, sentiment) as server:
        monkeypatch.setenv("GROQ_BASE_URL", server.url)
        yield server


@asynccontextmanager
async def open_hub(with_chat: bool = False) -> AsyncIterator[Hub]:
    """Start the model, data and execution servers in process on one home."""
    settings = load_settings()
    execution_server = create_execution_server(settings)
    if with_chat and "chat" not in {t.name for t in await execution_server.list_tools()}:
        register_llm_tools(execution_server)

    async with (
        Client(create_model_server(settings)) as models,
        Client(create_data_server(settings)) as data,
        Client(execution_server) as execution,
    ):
        yield Hub(models, data, execution, settings)


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """Call a tool that must succeed and return its structured result."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, error_text(result)
    assert result.structured_content is not None
    return result.structured_content


def error_text(result: CallToolResult) -> str:
    return " ".join(getattr(item, "text", "") for item in result.content)


async def deploy_llm(hub: Hub, imports: Path) -> None:
    """Register the reviews dataset and an LLM, and deploy it as 'reviewer'."""
    await call(hub.data, "register_dataset", name="reviews", path=str(imports / "reviews.jsonl"))
    await call(hub.models, "register_llm", name="labeller", provider_model=PROVIDER_MODEL)
    await call(hub.execution, "create_deployment", name="reviewer", model_name="labeller")


async def run_reviews(hub: Hub, **extra: Any) -> CallToolResult:
    arguments = {
        "deployment": "reviewer",
        "dataset": "reviews",
        "label_column": "label",
        "prompt_template": TEMPLATE,
        "system_prompt": SYSTEM_PROMPT,
        **extra,
    }
    return await hub.execution.call_tool("run_execution", arguments)


def read_predictions(execution: dict[str, Any]) -> pa.Table:
    path = Path(unquote(urlparse(execution["predictions_url"]).path))
    return pq.read_table(path)


def files_containing(root: Path, secret: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


async def test_llm_run_writes_outputs_and_metrics(stub: GroqStub, llm_env: Path) -> None:
    progress: list[tuple[float, float | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total))

    async with open_hub() as hub:
        await deploy_llm(hub, llm_env)
        result = await hub.execution.call_tool(
            "run_execution",
            {
                "deployment": "reviewer",
                "dataset": "reviews",
                "label_column": "label",
                "prompt_template": TEMPLATE,
                "system_prompt": SYSTEM_PROMPT,
            },
            progress_callback=on_progress,
        )

    assert not result.is_error, error_text(result)
    execution = result.structured_content
    assert execution["status"] == "succeeded"
    assert execution["engine"] == "groq"
    assert execution["rows_processed"] == len(REVIEWS)
    assert execution["plot_url"] is not None
    assert progress[-1] == (len(REVIEWS), len(REVIEWS))

    llm = execution["parameters"]["llm"]
    assert llm["prompt_template"] == TEMPLATE
    assert llm["temperature"] == 0.0
    assert llm["max_tokens"] == 256
    assert llm["concurrency"] == 4
    assert llm["max_retries"] == 5
    assert llm["continue_on_error"] is True

    table = read_predictions(execution)
    assert table.schema.names == [
        "row",
        "prompt",
        "output",
        "error",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "latency_ms",
        "attempts",
        "label",
    ]
    assert table.schema.field("row").type == pa.int64()
    assert table.schema.field("latency_ms").type == pa.float64()
    rows = table.to_pylist()
    assert [r["row"] for r in rows] == list(range(len(REVIEWS)))
    assert [r["label"] for r in rows] == [label for _, label in REVIEWS]
    assert rows[2]["prompt"] == TEMPLATE.format(text="terrible screen")
    assert rows[2]["output"] == "  negative \n"
    assert table["error"].null_count == len(REVIEWS)

    prompt_tokens = sum(
        count_tokens(SYSTEM_PROMPT) + count_tokens(TEMPLATE.format(text=text))
        for text, _ in REVIEWS
    )
    completion_tokens = len(REVIEWS)
    metrics = execution["metrics"]
    assert metrics["rows"] == len(REVIEWS)
    assert metrics["failed_rows"] == 0
    assert metrics["prompt_tokens"] == prompt_tokens
    assert metrics["completion_tokens"] == completion_tokens
    assert metrics["total_tokens"] == prompt_tokens + completion_tokens
    assert metrics["evaluated_rows"] == len(REVIEWS)
    assert metrics["accuracy"] == pytest.approx(5 / 6)
    # positive: precision 3/4, recall 1; negative: precision 1, recall 2/3.
    assert metrics["precision_macro"] == pytest.approx(0.875)
    assert metrics["recall_macro"] == pytest.approx(5 / 6)
    assert metrics["f1_macro"] == pytest.approx((6 / 7 + 0.8) / 2)
    assert metrics["f1_weighted"] == pytest.approx((6 / 7 + 0.8) / 2)
    assert metrics["confusion_matrix"] == {
        "labels": ["negative", "positive"],
        "matrix": [[2, 1], [0, 3]],
    }

    assert len(stub.calls) == len(REVIEWS)
    assert stub.auth_failures == 0
    first = stub.calls[0]
    assert first.body["model"] == PROVIDER_MODEL
    assert first.body["temperature"] == 0.0
    assert first.body["max_completion_tokens"] == 256
    assert first.system_prompt == SYSTEM_PROMPT


async def test_rate_limit_waits_for_retry_after(
    stub: GroqStub, llm_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLHUB_GROQ_MAX_BACKOFF", "5")

    def plan(call: Call) -> Action:
        if call.number <= 2:
            return Status(429, "rate limit reached", {"retry-after": "1"})
        return sentiment(call)

    stub.plan = plan
    async with open_hub() as hub:
        await deploy_llm(hub, llm_env)
        result = await run_reviews(hub)

    assert not result.is_error, error_text(result)
    metrics = result.structured_content["metrics"]
    assert metrics["failed_rows"] == 0
    assert metrics["retries"] == 2
    assert len(stub.calls) == len(REVIEWS) + 2

    for limited in stub.calls[:2]:
        retry = next(c for c in stub.calls[2:] if c.prompt == limited.prompt)
        assert retry.received_at - limited.received_at >= 0.9


async def test_retry_after_capped_by_max_backoff(
    stub: GroqStub, llm_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLHUB_GROQ_MAX_BACKOFF", "0.1")

    def plan(call: Call) -> Action:
        if call.number == 1:
            return Status(429, "rate limit reached", {"retry-after": "600"})
        return sentiment(call)

    stub.plan = plan
    async with open_hub() as hub:
        await deploy_llm(hub, llm_env)
        result = await run_reviews(hub)

    assert not result.is_error, error_text(result)
    assert result.structured_content["metrics"]["retries"] == 1
    assert result.structured_content["duration_seconds"] < 5


async def test_server_errors_are_retried(stub: GroqStub, llm_env: Path) -> None:
    seen: set[str] = set()

    def plan(call: Call) -> Action:
        if "screen" in call.prompt or "battery" in call.prompt:
            if call.prompt not in seen:
                seen.add(call.prompt)
                return Status(500, "internal error")
        return sentiment(call)

    stub.plan = plan
    async with open_hub() as hub:
        await deploy_llm(hub, llm_env)
        result = await run_reviews(hub)

    assert not result.is_error, error_text(result)
    table = read_predictions(result.structured_content)
    attempts = dict(zip(table["row"].to_pylist(), table["attempts"].to_pylist(), strict=True))
    assert attempts == {0: 1, 1: 2, 2: 2, 3: 1, 4: 1, 5: 1}
    assert table["error"].null_count == len(REVIEWS)
    assert result.structured_content["metrics"]["accuracy"] == pytest.approx(5 / 6)


async def test_timeout_and_malformed_rows_recorded(
    stub: GroqStub, llm_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLHUB_GROQ_TIMEOUT", "0.3")
    monkeypatch.setenv("MLHUB_GROQ_MAX_RETRIES", "1")

    def plan(call: Call) -> Action:
        if "terrible" in call.prompt:
            return Hang(3)
        if "broke" in call.prompt:
            return Malformed()
        return sentiment(call)

    stub.plan = plan
    async with open_hub() as hub:
        await deploy_llm(hub, llm_env)
        result = await run_reviews(hub)

    assert not result.is_error, error_text(result)
    execution = result.structured_content
    assert execution["status"] == "succeeded"

    rows = read_predictions(execution).to_pylist()
    timed_out, malformed = rows[2], rows[3]
    assert timed_out["output"] is None
    assert "timed out after 0.3 s (after 2 attempts)" in timed_out["error"]
    assert timed_out["attempts"] == 2
    assert timed_out["total_tokens"] is None
    assert malformed["output"] is None
    assert "malformed response body" in malformed["error"]
    assert malformed["attempts"] == 2

    metrics = execution["metrics"]
    assert metrics["failed_rows"] == 2
    assert metrics["evaluated_rows"] == 4
    assert metrics["accuracy"] == pytest.approx(3 / 4)


async def test_continue_on_error_false_fails_run(
    stub: GroqStub, llm_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLHUB_GROQ_CONTINUE_ON_ERROR", "false")
    monkeypatch.setenv("MLHUB_GROQ_MAX_RETRIES", "0")
    monkeypatch.setenv("MLHUB_GROQ_CONCURRENCY", "1")

    def plan(call: Call) -> Action:
        return Status(500, "internal error") if "broke" in call.prompt else sentiment(call)

    stub.plan = plan
    async with open_hub() as hub:
        await deploy_llm(hub, llm_env)
        result = await run_reviews(hub)
        executions = await call(hub.execution, "list_executions")

    assert result.is_error
    assert "row 3 failed: HTTP 500: internal error" in error_text(result)
    (execution,) = executions["executions"]
    assert execution["status"] == "failed"
    assert "MLHUB_GROQ_CONTINUE_ON_ERROR is false" in execution["error"]
    assert len(stub.calls) == 4


async def test_unknown_model_fails_run_at_once(stub: GroqStub, llm_env: Path) -> None:
    stub.plan = lambda call: Status(404, f"The model `{PROVIDER_MODEL}` does not exist")
    async with open_hub() as hub:
        await deploy_llm(hub, llm_env)
        result = await run_reviews(hub)

    assert result.is_error
    assert "HTTP 404" in error_text(result)
    assert "does not exist" in error_text(result)
    assert len(stub.calls) <= 4


async def test_missing_key_fails_run_before_start(
    stub: GroqStub, llm_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GROQ_API_KEY")
    async with open_hub() as hub:
        await deploy_llm(hub, llm_env)
        result = await run_reviews(hub)
        executions = await call(hub.execution, "list_executions")

    assert result.is_error
    assert "set GROQ_API_KEY to run LLM deployments" in error_text(result)
    assert executions["executions"] == []
    assert stub.calls == []


async def test_bad_template_rejected_before_start(stub: GroqStub, llm_env: Path) -> None:
    async with open_hub() as hub:
        await deploy_llm(hub, llm_env)
        unknown = await run_reviews(hub, prompt_template="Review: {body}")
        missing = await run_reviews(hub, prompt_template=None)

    assert unknown.is_error
    assert "placeholder {body} is not a column" in error_text(unknown)
    assert "['text', 'label']" in error_text(unknown)
    assert missing.is_error
    assert "'prompt_template' is required" in error_text(missing)
    assert stub.calls == []


async def test_api_key_never_leaks(
    stub: GroqStub,
    llm_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The stub echoes the Authorization header in its error bodies."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("MLHUB_GROQ_MAX_RETRIES", "0")

    def echo_row_error(call: Call) -> Action:
        if "broke" in call.prompt:
            return Status(400, f"bad request with {call.authorization}")
        return sentiment(call)

    async with open_hub(with_chat=True) as hub:
        await deploy_llm(hub, llm_env)
        stub.plan = echo_row_error
        row_failure = await run_reviews(hub)
        stub.plan = lambda call: Status(401, f"invalid key {call.authorization}")
        run_failure = await run_reviews(hub)
        chat_failure = await hub.execution.call_tool(
            "chat", {"deployment": "reviewer", "prompt": "hello"}
        )
        executions = await call(hub.execution, "list_executions")

    assert not row_failure.is_error, error_text(row_failure)
    rows = read_predictions(row_failure.structured_content).to_pylist()
    assert rows[3]["error"] == "HTTP 400: bad request with Bearer [redacted]"
    assert run_failure.is_error
    assert "Bearer [redacted]" in error_text(run_failure)
    assert chat_failure.is_error
    assert "Bearer [redacted]" in error_text(chat_failure)

    for result in (row_failure, run_failure, chat_failure):
        assert API_KEY not in result.model_dump_json()
    assert API_KEY not in json.dumps(executions)
    assert files_containing(llm_env.parent / "home", API_KEY) == []
    assert API_KEY not in caplog.text
    assert any(r.name == "mlhub_mcp.execution._groq" for r in caplog.records)


async def test_chat_tool_replies(stub: GroqStub, llm_env: Path) -> None:
    stub.plan = lambda call: Answer(f"echo: {call.prompt}")
    async with open_hub(with_chat=True) as hub:
        await deploy_llm(hub, llm_env)
        tools = {t.name: t for t in (await hub.execution.list_tools()).tools}
        reply = await call(
            hub.execution,
            "chat",
            deployment="reviewer",
            prompt="say hi",
            system_prompt="be brief",
            temperature=0.5,
            max_tokens=12,
        )
        missing = await hub.execution.call_tool("chat", {"deployment": "nope", "prompt": "hi"})

    assert tools["chat"].annotations.read_only_hint is True
    assert tools["chat"].annotations.open_world_hint is True
    assert reply["output"] == "echo: say hi"
    assert reply["model"] == PROVIDER_MODEL
    assert reply["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    assert reply["latency_ms"] > 0
    (request,) = stub.calls
    assert request.system_prompt == "be brief"
    assert request.body["temperature"] == 0.5
    assert request.body["max_completion_tokens"] == 12
    assert missing.is_error
    assert "deployment 'nope' not found" in error_text(missing)


async def test_chat_rejects_model_file_deployment(stub: GroqStub, llm_env: Path) -> None:
    import joblib
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression().fit([[0.0, 1.0], [1.0, 0.0]], [0, 1])
    joblib.dump(model, llm_env / "tiny.joblib")
    async with open_hub(with_chat=True) as hub:
        await call(
            hub.models,
            "register_model",
            name="tiny",
            path=str(llm_env / "tiny.joblib"),
            trusted=True,
        )
        await call(hub.execution, "create_deployment", name="tiny-prod", model_name="tiny")
        result = await hub.execution.call_tool("chat", {"deployment": "tiny-prod", "prompt": "hi"})

    assert result.is_error
    assert "not a hosted LLM" in error_text(result)
    assert stub.calls == []


def test_validate_fills_defaults_without_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GROQ_API_KEY", API_KEY)
    monkeypatch.setenv("MLHUB_GROQ_CONCURRENCY", "8")
    monkeypatch.setenv("MLHUB_GROQ_CONTINUE_ON_ERROR", "no")

    llm = validate_llm_parameters({"prompt_template": "Q: {question}"}, {"question": "string"})

    assert llm["temperature"] == 0.0
    assert llm["max_tokens"] == 256
    assert llm["system_prompt"] is None
    assert llm["concurrency"] == 8
    assert llm["continue_on_error"] is False
    assert API_KEY not in json.dumps(llm)


@pytest.mark.parametrize(
    ("llm", "error", "text"),
    [
        pytest.param({}, InvalidInput, "'prompt_template' is required", id="no-template"),
        pytest.param({"prompt_template": "static"}, InvalidInput, "no {column}", id="no-field"),
        pytest.param({"prompt_template": "{}"}, InvalidInput, "positional", id="positional"),
        pytest.param({"prompt_template": "{q.x}"}, InvalidInput, "attribute", id="attribute"),
        pytest.param({"prompt_template": "{q"}, InvalidInput, "not a valid format", id="brace"),
        pytest.param({"prompt_template": "{answer}"}, SchemaMismatch, "['q', 'n']", id="unknown"),
        pytest.param(
            {"prompt_template": "{q:.2f}"}, InvalidInput, "cannot be rendered", id="bad-spec"
        ),
        pytest.param(
            {"prompt_template": "{q}", "temperature": 3}, InvalidInput, "from 0 to 2", id="temp"
        ),
        pytest.param(
            {"prompt_template": "{q}", "max_tokens": 0}, InvalidInput, "from 1 to", id="tokens"
        ),
        pytest.param({"prompt_template": "{q}", "top_k": 1}, InvalidInput, "unknown", id="key"),
    ],
)
def test_validate_rejects_bad_options(
    monkeypatch: pytest.MonkeyPatch, llm: dict[str, Any], error: type[Exception], text: str
) -> None:
    monkeypatch.setenv("GROQ_API_KEY", API_KEY)

    with pytest.raises(error) as raised:
        validate_llm_parameters(llm, {"q": "string", "n": "int64"})

    assert text in str(raised.value)


def test_validate_rejects_bad_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GROQ_API_KEY", API_KEY)
    monkeypatch.setenv("MLHUB_GROQ_CONCURRENCY", "0")

    with pytest.raises(ConfigurationError, match="MLHUB_GROQ_CONCURRENCY='0' is invalid"):
        validate_llm_parameters({"prompt_template": "{q}"}, {"q": "string"})


def test_render_prompt_blanks_nulls() -> None:
    prompt = render_prompt("[{a}] [{b}] {n:03d}", {"a": None, "b": "x", "n": 7})

    assert prompt == "[] [x] 007"


def test_free_text_labels_get_accuracy_only() -> None:
    results = [
        RowResult(0, "p", output="Paris"),
        RowResult(1, "p", output=" the  Moon "),
        RowResult(2, "p", output="forty two"),
        RowResult(3, "p", error="HTTP 400: bad request"),
    ]

    metrics = llm_metrics(results, ["paris", "The Moon", "42", "x"], 1.0)

    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["evaluated_rows"] == 3
    assert metrics["failed_rows"] == 1
    assert "f1_macro" not in metrics


async def test_stub_streams_chunks(stub: GroqStub) -> None:
    """The stub's SSE replies parse with the SDK's stream reader."""
    import groq

    stub.plan = lambda call: Answer("one two three")
    client = groq.AsyncGroq(api_key=API_KEY, base_url=stub.url, max_retries=0)
    async with client:
        stream = await client.chat.completions.create(
            model=PROVIDER_MODEL, messages=[{"role": "user", "content": "count"}], stream=True
        )
        pieces = [chunk.choices[0].delta.content or "" async for chunk in stream]

    assert "".join(pieces) == "one two three"
    assert stub.calls[0].body["stream"] is True
