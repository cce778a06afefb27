"""workflow_route: requests in words or structured, routed by rules or by an LLM stub."""

import json
from collections.abc import Iterator

import pytest
from mcp import Client

from mlhub_mcp.hub.workflows._route import extract_json_object
from mlhub_mcp.hub.workflows._rules import ambiguity, match_rules, unclear_names
from tests.groq_stub import Answer, Call, Status
from tests.workflows.conftest import (
    CLASSIFIERS,
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


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            "describe model victim; also delete model other",
            "the request joins several actions with ';'",
        ),
        ("don't delete model other", 'the request contains the negation "don\'t"'),
        ("do not remove dataset digits", "the request contains the negation 'not'"),
        ("never delete deployment tree-staging", "the request contains the negation 'never'"),
        ("delete model a1 without asking", "the request contains the negation 'without'"),
        ("list models then delete model m1", "the request joins several actions with 'then'"),
        ("describe model m1 and delete model m2", "several kinds of action: read, delete"),
        ("deploy model m1 as m1-prod and run it", "several kinds of action: run, deploy"),
    ],
)
def test_ambiguity_rejects_unsafe_requests(text: str, reason: str) -> None:
    problem = ambiguity(text)

    assert problem is not None
    assert reason in problem


@pytest.mark.parametrize(
    "text",
    [
        "run deployment logreg-staging on dataset digits-holdout with label column label",
        "deploy model digits-tree version 1 as tree-prod to production",
        "show the first 3 rows of dataset 'digits-holdout'",
        "describe model digits-forest.",
        "delete model delete-me",
        "run deployment stop-now on dataset remove-me with label column drop",
    ],
)
def test_ambiguity_accepts_one_action(text: str) -> None:
    assert ambiguity(text) is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("describe model please", "name 'please' is a common word, not a plausible name"),
        (
            "remove model version 2 of digits-tree",
            "name 'version' is a common word, not a plausible name",
        ),
        (
            "delete model alpha and model beta",
            "the request also names model 'beta', which delete_model does not take",
        ),
        (
            "delete dataset digits-narrow and model alpha",
            "the request also names dataset 'digits-narrow', which delete_model does not take",
        ),
    ],
)
def test_unclear_names_are_reported(text: str, reason: str) -> None:
    found = match_rules(text)

    assert found is not None
    assert unclear_names(text, found) == reason


def test_every_model_routes_to_the_listing() -> None:
    found = match_rules("show me every model please")

    assert found is not None
    assert found.tool == "list_models"
    assert found.arguments == {}
    assert unclear_names("show me every model please", found) is None


async def _register_model(platform: Platform, name: str) -> None:
    path = str(platform.files / "nine.onnx")
    await call(platform.client, "register_model", {"name": name, "path": path})


async def _model_exists(client: Client, name: str) -> bool:
    listing = await call(client, "list_models", {"name": name})
    return any(model["name"] == name for model in listing["models"])


@pytest.mark.parametrize(
    "request_text",
    [
        "describe model route-victim; also delete model route-other",
        "don't delete model route-other",
        "describe model route-victim and delete model route-other",
    ],
)
async def test_route_rejects_ambiguous_deletes(platform: Platform, request_text: str) -> None:
    for name in ("route-victim", "route-other"):
        if not await _model_exists(platform.client, name):
            await _register_model(platform, name)
    arguments = {"request": request_text, "mode": "rules", "allow_destructive": True}

    result = await call_failing(platform.client, "workflow_route", arguments)
    output = result.structured_content

    assert output is not None
    assert output["ambiguous"] is True
    assert output["executed"] is False
    assert output["method"] == "rules"
    assert text_of(result).startswith("ambiguous request, so nothing was run: ")
    assert await _model_exists(platform.client, "route-victim")
    assert await _model_exists(platform.client, "route-other")


async def test_route_every_model_lists_them(client: Client) -> None:
    arguments = {"request": "show me every model please", "mode": "rules"}

    output = await call(client, "workflow_route", arguments)

    assert output["tool"] == "list_models"
    assert output["arguments"] == {}
    assert output["executed"] is True
    assert CLASSIFIERS["tree"] in {model["name"] for model in output["result"]["models"]}


async def test_route_delete_needs_an_existing_entry(client: Client) -> None:
    arguments = {"request": "delete model ghost-model", "allow_destructive": True}

    result = await call_failing(client, "workflow_route", arguments)
    output = result.structured_content

    assert output is not None
    assert output["tool"] == "delete_model"
    assert output["executed"] is False
    assert "get_model found no entry to act on" in output["error"]
    assert "which was not run because get_model found no entry" in text_of(result)


async def test_route_deletes_an_existing_entry(platform: Platform) -> None:
    await _register_model(platform, "route-doomed")
    arguments = {"request": "delete model route-doomed", "allow_destructive": True}

    output = await call(platform.client, "workflow_route", arguments)

    assert output["tool"] == "delete_model"
    assert output["executed"] is True
    assert output["result"]["deleted_versions"] == [1]
    assert not await _model_exists(platform.client, "route-doomed")


async def test_route_llm_delete_with_negation_is_rejected(llm: Platform) -> None:
    if not await _model_exists(llm.client, "route-kept"):
        await _register_model(llm, "route-kept")
    choice = {"tool": "delete_model", "arguments": {"name": "route-kept"}, "reason": "asked"}
    llm.stub.plan = lambda call: Answer(json.dumps(choice))
    arguments = {
        "request": "please don't delete model route-kept",
        "mode": "llm",
        "allow_destructive": True,
    }

    result = await call_failing(llm.client, "workflow_route", arguments)
    output = result.structured_content

    assert output is not None
    assert output["ambiguous"] is True
    assert output["method"] == "llm"
    assert output["tool"] == "delete_model"
    assert output["executed"] is False
    assert 'the request contains the negation "don\'t"' in text_of(result)
    assert await _model_exists(llm.client, "route-kept")


async def test_route_llm_read_with_negation_runs(llm: Platform) -> None:
    choice = {"tool": "list_models", "arguments": {"task_type": "classification"}}
    llm.stub.plan = lambda call: Answer(json.dumps(choice))
    arguments = {"request": "list models that are not regressors", "mode": "llm"}

    output = await call(llm.client, "workflow_route", arguments)

    assert output["method"] == "llm"
    assert output["tool"] == "list_models"
    assert output["executed"] is True
