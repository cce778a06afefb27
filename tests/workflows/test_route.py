"""workflow_route: requests in words or structured, routed by rules or by an LLM stub."""

import json
from collections.abc import Iterator

import pytest
from mcp import Client

from mlhub_mcp.hub.workflows._route import extract_json_object
from mlhub_mcp.hub.workflows._rules import match_rules
from tests.groq_stub import Answer, Call, Status
from tests.workflows.conftest import (
    DEPLOYMENTS,
    GROQ_KEY,
    HOLDOUT,
    NARROW,
    Platform,
    call,
    call_failing,
    label_reviews,
    text_of,
)

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def no_llm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Route by rules unless a test sets GROQ_API_KEY itself."""
    monkeypatch.delenv("GROQ_API_KEY", raising=False)
    monkeypatch.delenv("GROQ_BASE_URL", raising=False)
    monkeypatch.delenv("MLHUB_ROUTE_MODEL", raising=False)


@pytest.fixture
def llm(platform: Platform, monkeypatch: pytest.MonkeyPatch) -> Iterator[Platform]:
    """Point the router at the Groq stub; the test sets the stub's plan."""
    monkeypatch.setenv("GROQ_API_KEY", GROQ_KEY)
    monkeypatch.setenv("GROQ_BASE_URL", platform.stub.url)
    yield platform
    platform.stub.plan = label_reviews


@pytest.mark.parametrize(
    ("text", "tool", "arguments"),
    [
        (
            "run deployment logreg-staging on dataset digits-holdout with label column label",
            "run_execution",
            {"deployment": "logreg-staging", "dataset": "digits-holdout", "label_column": "label"},
        ),
        (
            "deploy model digits-tree version 1 as tree-prod to production",
            "create_deployment",
            {
                "model_name": "digits-tree",
                "model_version": 1,
                "name": "tree-prod",
                "environment": "production",
            },
        ),
        (
            "show the first 3 rows of dataset 'digits-holdout'",
            "preview_dataset",
            {"name": "digits-holdout", "rows": 3},
        ),
        (
            "what columns does dataset digits-narrow have?",
            "get_dataset_schema",
            {"name": "digits-narrow"},
        ),
        ("which classification models are there", "list_models", {"task_type": "classification"}),
        ("describe model digits-forest.", "get_model", {"name": "digits-forest"}),
        (
            "status of execution 0123456789abcdef01234567",
            "get_execution",
            {"execution_id": "0123456789abcdef01234567"},
        ),
        (
            "list failed executions of deployment tree-staging",
            "list_executions",
            {"deployment": "tree-staging", "status": "failed"},
        ),
    ],
)
def test_rules_extract_tool_and_arguments(text: str, tool: str, arguments: dict) -> None:
    found = match_rules(text)

    assert found is not None
    assert found.tool == tool
    assert found.arguments == arguments
    assert found.missing == []


def test_extract_json_object_reads_fenced_answers() -> None:
    answer = 'Sure! ```json\n{"tool": "list_models", "arguments": {}}\n``` Done {not json}'

    assert extract_json_object(answer) == {"tool": "list_models", "arguments": {}}
    assert extract_json_object("no object here") is None


async def test_route_by_rules_runs_the_tool(client: Client) -> None:
    output = await call(
        client, "workflow_route", {"request": f"show the first 3 rows of dataset {HOLDOUT}"}
    )

    assert output["method"] == "rules"
    assert output["tool"] == "preview_dataset"
    assert output["server"] == "data"
    assert output["arguments"] == {"name": HOLDOUT, "rows": 3}
    assert output["reason"] == "rule 'preview a dataset' matched the request"
    assert output["executed"] is True
    assert len(output["result"]["rows"]) == 3


async def test_route_structured_request(client: Client) -> None:
    request = {"action": "schema", "target": "dataset", "arguments": {"name": NARROW}}

    output = await call(client, "workflow_route", {"request": request})

    assert output["method"] == "structured"
    assert output["tool"] == "get_dataset_schema"
    assert [c["name"] for c in output["result"]["columns"]][-1] == "label"


async def test_route_reports_missing_arguments(client: Client) -> None:
    result = await call_failing(
        client, "workflow_route", {"request": "deploy model digits-tree to staging"}
    )

    assert result.structured_content is not None
    assert result.structured_content["tool"] == "create_deployment"
    assert result.structured_content["missing_arguments"] == ["name"]
    assert result.structured_content["executed"] is False
    assert "lacks ['name']" in text_of(result)


async def test_route_without_a_match_lists_the_rules(client: Client) -> None:
    result = await call_failing(client, "workflow_route", {"request": "make me a sandwich"})

    assert result.structured_content is not None
    assert result.structured_content["method"] is None
    assert "no route for the request" in text_of(result)
    assert "preview a dataset (preview_dataset)" in text_of(result)


async def test_route_holds_back_destructive_tools(client: Client) -> None:
    output = await call(client, "workflow_route", {"request": f"delete dataset {NARROW}"})
    still_there = await call(client, "get_dataset", {"name": NARROW})

    assert output["tool"] == "delete_dataset"
    assert output["executed"] is False
    assert "delete_dataset is destructive and allow_destructive is false" in output["reason"]
    assert still_there["name"] == NARROW


async def test_route_passes_on_the_tool_error(client: Client) -> None:
    result = await call_failing(
        client, "workflow_route", {"request": "describe deployment ghost-deployment"}
    )

    assert result.structured_content is not None
    assert result.structured_content["tool"] == "get_deployment"
    assert "deployment 'ghost-deployment' not found" in result.structured_content["error"]


async def test_route_by_llm(llm: Platform) -> None:
    def choose(call: Call) -> Answer:
        choice = {
            "tool": "get_deployment",
            "arguments": {"name": DEPLOYMENTS["tree"]},
            "reason": "asks about it",
        }
        return Answer(f"Here is the call:\n```json\n{json.dumps(choice)}\n```")

    llm.stub.plan = choose
    first_call = len(llm.stub.calls)

    output = await call(llm.client, "workflow_route", {"request": "tell me about the tree thing"})
    sent = llm.stub.calls[first_call]

    assert output["method"] == "llm"
    assert output["tool"] == "get_deployment"
    assert output["reason"] == "llama-3.3-70b-versatile chose get_deployment: asks about it"
    assert output["result"]["name"] == DEPLOYMENTS["tree"]
    assert sent.body["model"] == "llama-3.3-70b-versatile"
    assert '"name": "get_deployment"' in (sent.system_prompt or "")
    assert sent.prompt == "tell me about the tree thing"


async def test_route_llm_failure_uses_rules(llm: Platform) -> None:
    llm.stub.plan = lambda call: Status(503, "over capacity")

    output = await call(llm.client, "workflow_route", {"request": f"preview dataset {HOLDOUT}"})

    assert output["method"] == "rules"
    assert output["tool"] == "preview_dataset"
    assert "the request to llama-3.3-70b-versatile failed" in output["llm_error"]
    assert "503" in output["llm_error"]


async def test_route_llm_invalid_arguments_use_rules(llm: Platform) -> None:
    choice = {"tool": "preview_dataset", "arguments": {"dataset": HOLDOUT}}
    llm.stub.plan = lambda call: Answer(json.dumps(choice))

    output = await call(
        llm.client, "workflow_route", {"request": f"preview dataset {HOLDOUT}", "execute": False}
    )

    assert output["method"] == "rules"
    assert "chose preview_dataset with invalid arguments" in output["llm_error"]
    assert "'name' is a required property" in output["llm_error"]
    assert output["executed"] is False


async def test_route_llm_mode_needs_a_key(client: Client) -> None:
    result = await call_failing(client, "workflow_route", {"request": "list models", "mode": "llm"})

    assert "mode 'llm' needs GROQ_API_KEY" in text_of(result)
