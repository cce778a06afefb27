"""End to end: the hub over stdio, with the three servers as real subprocesses."""

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, MCPError, StdioServerParameters

from mlhub_mcp.config import Settings

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def _text(result: Any) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


@pytest.fixture
async def hub(settings: Settings, staged_digits: dict[str, Path]) -> AsyncIterator[Client]:
    env = {
        "MLHUB_HOME": str(settings.home),
        "MLHUB_IMPORT_DIRS": str(settings.import_dirs[0]),
        "MLHUB_LOG_LEVEL": "WARNING",
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
    }
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "mlhub_mcp", "hub"],
        env=env,
        cwd=str(settings.home.parent),
    )
    async with Client(params, mode="legacy", read_timeout_seconds=120) as client:
        yield client


async def test_hub_serves_the_union_of_the_servers(hub: Client) -> None:
    tools = {t.name for t in (await hub.list_tools()).tools}
    templates = {t.uri_template for t in (await hub.list_resource_templates()).resource_templates}
    prompts = {p.name for p in (await hub.list_prompts()).prompts}

    assert {"register_model", "register_dataset", "run_execution", "hub_status"} <= tools
    assert {
        "models://{name}/card",
        "datasets://{name}/preview",
        "executions://{execution_id}",
    } <= templates
    assert {"describe_model", "explore_dataset", "evaluate_model"} <= prompts


async def test_full_flow_through_the_hub(hub: Client) -> None:
    updates: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append(progress)

    model = await hub.call_tool("register_model", {"name": "digits", "path": "digits.onnx"})
    dataset = await hub.call_tool("register_dataset", {"name": "digits", "path": "digits_test.csv"})
    deployment = await hub.call_tool("create_deployment", {"name": "dep", "model_name": "digits"})
    run = await hub.call_tool(
        "run_execution",
        {"deployment": "dep", "dataset": "digits", "label_column": "label", "batch_size": 32},
        progress_callback=on_progress,
    )

    for result in (model, dataset, deployment, run):
        assert not result.is_error, _text(result)
    assert run.structured_content["metrics"]["accuracy"] > 0.9
    assert updates and updates[-1] == 540
    assert run.content[1].type == "image"


async def test_errors_pass_through_the_hub(hub: Client) -> None:
    tool_error = await hub.call_tool("get_model", {"name": "ghost"})
    unknown_tool = await hub.call_tool("no_such_tool", {})
    with pytest.raises(MCPError) as resource_error:
        await hub.read_resource("models://ghost/card")
    with pytest.raises(MCPError) as unrouted:
        await hub.read_resource("nowhere://x")
    with pytest.raises(MCPError) as prompt_error:
        await hub.get_prompt("no_such_prompt", {})

    assert tool_error.is_error
    assert "model 'ghost' not found" in _text(tool_error)
    assert unknown_tool.is_error
    assert resource_error.value.code == -32602
    assert unrouted.value.code == -32602
    assert prompt_error.value.code == -32602


async def test_resources_and_prompts_are_forwarded(hub: Client) -> None:
    await hub.call_tool("register_model", {"name": "digits", "path": "digits.onnx"})

    card = await hub.read_resource("models://digits/card")
    prompt = await hub.get_prompt("describe_model", {"name": "digits"})
    status = await hub.call_tool("hub_status", {})

    assert "digits (version 1)" in card.contents[0].text
    assert "models://digits/card" in prompt.messages[0].content.text
    assert status.structured_content["ready"] is True
    assert [s["state"] for s in status.structured_content["servers"]] == ["ready"] * 3
