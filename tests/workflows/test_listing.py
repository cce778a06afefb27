"""The workflow tools and prompts as a client of the hub lists and reads them."""

import pytest
from mcp import Client, MCPError

from mlhub_mcp.hub.workflows import workflow_prompts, workflow_tools

pytestmark = pytest.mark.anyio

NAMES = {
    "workflow_chain",
    "workflow_gate",
    "workflow_promote",
    "workflow_route",
    "workflow_compare",
    "workflow_sharded_run",
    "workflow_optimize",
}


def test_every_tool_has_a_prompt_of_its_name() -> None:
    assert {t.tool.name for t in workflow_tools()} == NAMES
    assert {p.prompt.name for p in workflow_prompts()} == NAMES


async def test_tools_are_listed_with_schemas_and_annotations(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools if t.name in NAMES}

    assert set(tools) == NAMES
    for tool in tools.values():
        assert tool.input_schema["type"] == "object"
        assert tool.output_schema is not None
        assert tool.output_schema["type"] == "object"
        assert tool.annotations is not None
        assert tool.title
        assert len(tool.description or "") > 200
        described = tool.input_schema["properties"].values()
        assert all("description" in p or "$ref" in p for p in described), tool.name


async def test_prompt_fills_in_the_given_names(client: Client) -> None:
    prompt = await client.get_prompt("workflow_promote", {"model": "iris", "threshold": "0.75"})
    text = prompt.messages[0].content.text

    assert '"model_name": "iris"' in text
    assert '"threshold": 0.75' in text
    assert '"deployment_name": "iris-production"' in text


async def test_prompt_rejects_unknown_arguments(client: Client) -> None:
    with pytest.raises(MCPError) as error:
        await client.get_prompt("workflow_chain", {"colour": "red"})

    assert error.value.code == -32602
    assert "has no arguments ['colour']" in error.value.message


async def test_prompt_rejects_non_numeric_threshold(client: Client) -> None:
    with pytest.raises(MCPError) as error:
        await client.get_prompt("workflow_promote", {"threshold": "high"})

    assert "invalid argument for prompt 'workflow_promote'" in error.value.message
