"""workflow_chain: tool calls in order, later arguments taken from earlier results."""

import pytest
from mcp import Client

from mlhub_mcp.hub.workflows._chain import BadReference, resolve
from tests.workflows.conftest import HOLDOUT, Platform, call, call_failing, text_of

pytestmark = pytest.mark.anyio


def test_resolve_keeps_types_and_interpolates_text() -> None:
    results = {"run": {"id": "abc", "rows": 540, "executions": [{"id": "x1"}]}}
    arguments = {
        "whole": "${steps.run.result.rows}",
        "text": "run ${steps.run.result.id} took ${steps.run.result.rows} rows",
        "ref": {"$ref": "run.executions[0].id"},
        "nested": [{"$ref": "run.executions.0"}],
    }

    resolved = resolve(arguments, results)

    assert resolved["whole"] == 540
    assert resolved["text"] == "run abc took 540 rows"
    assert resolved["ref"] == "x1"
    assert resolved["nested"] == [{"id": "x1"}]


def test_resolve_names_the_missing_key() -> None:
    with pytest.raises(BadReference) as error:
        resolve({"x": "${steps.run.result.idx}"}, {"run": {"id": "abc"}})

    assert "has no key 'idx'" in str(error.value)
    assert "['id']" in str(error.value)


async def test_chain_registers_deploys_and_runs(platform: Platform) -> None:
    steps = [
        {
            "id": "model",
            "tool": "register_model",
            "arguments": {"name": "chain-logreg", "path": str(platform.files / "logreg.onnx")},
        },
        {
            "id": "deploy",
            "tool": "create_deployment",
            "arguments": {
                "name": "chain-staging",
                "model_name": {"$ref": "model.name"},
                "model_version": "${steps.model.result.version}",
            },
        },
        {
            "id": "run",
            "tool": "run_execution",
            "arguments": {
                "deployment": "${steps.deploy.result.name}",
                "dataset": HOLDOUT,
                "label_column": "label",
            },
        },
        {
            "id": "check",
            "tool": "get_execution",
            "arguments": {"execution_id": "${steps.run.result.id}", "include_plot": False},
        },
    ]

    output = await call(platform.client, "workflow_chain", {"steps": steps})

    assert output["status"] == "succeeded"
    assert [s["status"] for s in output["steps"]] == ["succeeded"] * 4
    assert output["steps"][1]["arguments"]["model_version"] == 1
    assert output["steps"][1]["arguments"]["model_name"] == "chain-logreg"
    assert output["steps"][3]["arguments"]["execution_id"] == output["steps"][2]["result"]["id"]
    assert output["steps"][3]["result"]["metrics"]["accuracy"] > 0.9


async def test_chain_stops_at_the_failed_step(client: Client) -> None:
    steps = [
        {"id": "schema", "tool": "get_dataset_schema", "arguments": {"name": HOLDOUT}},
        {
            "id": "run",
            "tool": "run_execution",
            "arguments": {"deployment": "ghost", "dataset": "${steps.schema.result.name}"},
        },
        {"id": "after", "tool": "list_models", "arguments": {}},
    ]

    result = await call_failing(client, "workflow_chain", {"steps": steps})
    output = result.structured_content

    assert output is not None
    assert output["failed_step"] == "run"
    assert "deployment 'ghost' not found" in output["error"]
    assert [s["status"] for s in output["steps"]] == ["succeeded", "failed", "skipped"]
    assert output["steps"][1]["arguments"] == {"deployment": "ghost", "dataset": HOLDOUT}
    assert text_of(result).startswith("step 'run' failed: ")


async def test_chain_reports_an_unresolvable_path(client: Client) -> None:
    steps = [
        {"id": "schema", "tool": "get_dataset_schema", "arguments": {"name": HOLDOUT}},
        {
            "id": "preview",
            "tool": "preview_dataset",
            "arguments": {"name": "${steps.schema.result.title}"},
        },
    ]

    result = await call_failing(client, "workflow_chain", {"steps": steps})

    assert result.structured_content is not None
    assert result.structured_content["failed_step"] == "preview"
    assert "schema has no key 'title'" in result.structured_content["error"]


async def test_chain_rejects_forward_reference(client: Client) -> None:
    steps = [
        {
            "id": "deploy",
            "tool": "create_deployment",
            "arguments": {"name": "never", "model_name": {"$ref": "model.name"}},
        },
        {"id": "model", "tool": "get_model", "arguments": {"name": "digits-logreg"}},
    ]

    result = await call_failing(client, "workflow_chain", {"steps": steps})
    listing = await call(client, "list_deployments", {})

    assert "refers to step 'model'" in text_of(result)
    assert "which runs later" in text_of(result)
    assert "never" not in {d["name"] for d in listing["deployments"]}


async def test_chain_rejects_an_unknown_tool(client: Client) -> None:
    steps = [{"id": "a", "tool": "train_model", "arguments": {}}]

    result = await call_failing(client, "workflow_chain", {"steps": steps})

    assert "unknown tool 'train_model'" in text_of(result)


async def test_chain_rejects_invalid_arguments(client: Client) -> None:
    result = await call_failing(client, "workflow_chain", {"steps": [{"id": "1 bad", "tool": "x"}]})

    assert "invalid arguments for workflow_chain" in text_of(result)
    assert "steps.0.id" in text_of(result)
